using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Serialization;

namespace InferenceServer.Reliability;

/// <summary>
/// <c>reliability soak --minutes M</c>: mixed valid traffic (t2i and edits with references, HTTP and gRPC) as Poisson
/// arrivals at a fraction of the sustainable rate, with RSS and latency per window. Passes when nothing is lost and
/// nothing is a defect; the RSS drift (last window against the first) is reported.
/// </summary>
public static class SoakRun
{
    public sealed record Window(
        [property: JsonPropertyName("index")] int Index, [property: JsonPropertyName("end_s")] double EndSeconds,
        [property: JsonPropertyName("sent")] int Sent, [property: JsonPropertyName("accepted")] int Accepted,
        [property: JsonPropertyName("refused")] int Refused, [property: JsonPropertyName("errors")] int Errors,
        [property: JsonPropertyName("lost")] int Lost, [property: JsonPropertyName("latency_ms")] Percentiles Latency,
        [property: JsonPropertyName("rss_kb")] long RssKb);

    public sealed record Result
    {
        [JsonPropertyName("server")] public string Server { get; init; } = "";
        /// <summary>The output folder (result.json, summary.md, replay/).</summary>
        [JsonPropertyName("out")] public string Out { get; init; } = "";
        [JsonPropertyName("sustainable_rps")] public double SustainableRps { get; init; }
        [JsonPropertyName("offered_rps")] public double OfferedRps { get; init; }
        [JsonPropertyName("minutes")] public double Minutes { get; init; }
        [JsonPropertyName("windows")] public List<Window> Windows { get; init; } = [];
        [JsonPropertyName("errors_by_answer")] public Dictionary<string, int> ErrorsByAnswer { get; init; } = [];
        [JsonPropertyName("lost")] public int Lost { get; init; }
        [JsonPropertyName("defects")] public int Defects { get; init; }
        [JsonPropertyName("rss_drift")] public double RssDrift { get; init; }
        [JsonPropertyName("passed")] public bool Passed => Lost == 0 && Defects == 0;
    }

    public static async Task<Result> RunAsync(HarnessOptions h, TimeSpan length, double fraction, TimeSpan window, CancellationToken ct = default, double? fixedRate = null)
    {
        var output = new RunOutput(h.Out);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(h.TimeLimit);
        string model = await h.ModelFolderAsync(limit.Token).ConfigureAwait(false);
        await using var server = await ServerProcess.StartAsync(h.ServerDll, ServerProcess.ServeArgs(model, h.KeyArgs), h.StartTimeout, ct: limit.Token).ConfigureAwait(false);
        using var http = new HttpClient { BaseAddress = server.HttpBase };
        var samples = new ImageSamples();
        await samples.AddFromServerAsync(http, h.ApiKey, limit.Token).ConfigureAwait(false);
        using var sender = new RequestSender(server.HttpBase, server.GrpcAddress, h.ApiKey, TimeSpan.FromMinutes(3));
        int n = 0;
        FuzzCase Next() => ValidTraffic.Mixed(Interlocked.Increment(ref n), samples);
        // Capacity as one client sees it (closed loop, concurrency 1): concurrency 2+ on a CPU server mostly measures
        // batching luck over a short probe, and a soak offered more than the server sustains is an overload run.
        var probe = await OverloadRun.ClosedAsync("capacity", sender, Next, 1, null, TimeSpan.FromSeconds(20), limit.Token).ConfigureAwait(false);
        double rate = fixedRate ?? Math.Max(0.05, probe.Throughput * fraction);

        var done = new ConcurrentBag<(double EndSeconds, Outcome Outcome)>();
        var rng = new Random(17);
        var sw = Stopwatch.StartNew();
        var inFlight = new List<Task>();
        var windows = new List<Window>();
        double at = 0, nextWindow = window.TotalSeconds;
        void CloseWindows(bool final)
        {
            while (sw.Elapsed.TotalSeconds >= nextWindow || (final && windows.Count * window.TotalSeconds < length.TotalSeconds))
            {
                double from = nextWindow - window.TotalSeconds, to = nextWindow;
                var inWindow = done.Where(d => d.EndSeconds >= from && d.EndSeconds < to).Select(d => d.Outcome).ToList();
                windows.Add(new Window(windows.Count, Math.Round(to, 1), inWindow.Count, inWindow.Count(ValidTraffic.Accepted), inWindow.Count(ValidTraffic.Refused),
                    inWindow.Count(o => !ValidTraffic.Accepted(o) && !ValidTraffic.Refused(o) && !o.IsHang && o.Kind != "transport"),
                    inWindow.Count(o => o.IsHang || o.Kind == "transport"), Percentiles.Of(inWindow.Where(ValidTraffic.Accepted).Select(o => o.Milliseconds)),
                    server.RssKb() ?? 0));
                nextWindow += window.TotalSeconds;
                if (final && windows.Count * window.TotalSeconds >= length.TotalSeconds) break;
            }
        }
        while (!limit.IsCancellationRequested)
        {
            at += -Math.Log(1 - rng.NextDouble()) / rate;
            if (at > length.TotalSeconds) break;
            while (TimeSpan.FromSeconds(at) > sw.Elapsed)
            {
                var wait = TimeSpan.FromSeconds(Math.Min(at, nextWindow)) - sw.Elapsed;
                if (wait > TimeSpan.Zero) await Task.Delay(wait, limit.Token).ConfigureAwait(false);
                CloseWindows(false);
            }
            var c = Next();
            inFlight.Add(Task.Run(async () =>
            {
                var o = await sender.SendAsync(c, limit.Token).ConfigureAwait(false);
                done.Add((sw.Elapsed.TotalSeconds, o));
            }, CancellationToken.None));
        }
        await Task.WhenAll(inFlight).ConfigureAwait(false);
        CloseWindows(true);

        var all = done.Select(d => d.Outcome).ToList();
        long first = windows.FirstOrDefault()?.RssKb ?? 0, last = windows.LastOrDefault()?.RssKb ?? 0;
        var result = new Result
        {
            Server = h.ServerDll, Out = output.Folder, SustainableRps = probe.Throughput, OfferedRps = Math.Round(rate, 3), Minutes = length.TotalMinutes, Windows = windows,
            ErrorsByAnswer = all.Where(o => !ValidTraffic.Accepted(o)).GroupBy(o => $"{o.Bucket} {o.HttpStatus}".Trim()).ToDictionary(g => g.Key, g => g.Count()),
            Lost = all.Count(o => o.IsHang || o.Kind == "transport"), Defects = all.Count(o => o.IsDefect),
            RssDrift = first == 0 ? 0 : Math.Round((last - first) / (double)first, 3),
        };
        output.Write(result, Markdown(result, fraction));
        return result;
    }

    static string Markdown(Result r, double fraction)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# soak: {(r.Passed ? "PASS" : "FAIL")}\n");
        sb.AppendLine($"`{r.Server}`, {r.Minutes:0.#} min of mixed valid traffic (t2i + edits, HTTP + gRPC, 64x64, 2 steps) at {r.OfferedRps:F2} req/s "
            + $"({fraction:P0} of the measured {r.SustainableRps:F2} req/s). Lost {r.Lost}, defects {r.Defects}, RSS drift first to last window {r.RssDrift:+0.0%;-0.0%}."
            + (r.ErrorsByAnswer.Count > 0 ? $" Not accepted: {string.Join(", ", r.ErrorsByAnswer.Select(kv => $"{kv.Key} x{kv.Value}"))}." : "") + "\n");
        sb.AppendLine(RunOutput.Table(["window", "end s", "answered", "accepted", "refused", "errors", "lost", "latency p50 / p99 ms", "RSS"],
            r.Windows.Select(w => (IReadOnlyList<string>)[w.Index.ToString(), w.EndSeconds.ToString("F0"), w.Sent.ToString(), w.Accepted.ToString(), w.Refused.ToString(),
                w.Errors.ToString(), w.Lost.ToString(), w.Latency.ToString(), RunOutput.Mb(w.RssKb)])));
        return sb.ToString();
    }
}
