using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Serialization;

namespace InferenceServer.Reliability;

/// <summary>
/// <c>reliability overload</c>: unloaded latency (one at a time), the sustainable rate (closed loop at concurrency
/// 1, 2, 4: the best throughput), then open-loop Poisson arrivals at a multiple of it. Every request must be answered:
/// accepted (200 / OK) or refused (429 / RESOURCE_EXHAUSTED); lost (no answer, dropped connection) must be 0.
/// </summary>
public static class OverloadRun
{
    /// <summary>A short queue so that refusals start within seconds of a short run (the default of 64 needs minutes at CPU rates).</summary>
    public const int MaxQueue = 8;

    public sealed record Phase(
        [property: JsonPropertyName("name")] string Name, [property: JsonPropertyName("offered_rps")] double? OfferedRps,
        [property: JsonPropertyName("concurrency")] int? Concurrency, [property: JsonPropertyName("seconds")] double Seconds,
        [property: JsonPropertyName("sent")] int Sent, [property: JsonPropertyName("accepted")] int Accepted,
        [property: JsonPropertyName("refused")] int Refused, [property: JsonPropertyName("other")] Dictionary<string, int> Other,
        [property: JsonPropertyName("lost")] int Lost, [property: JsonPropertyName("throughput_rps")] double Throughput,
        [property: JsonPropertyName("accepted_ms")] Percentiles AcceptedMs, [property: JsonPropertyName("refused_ms")] Percentiles RefusedMs);

    public sealed record Result
    {
        [JsonPropertyName("server")] public string Server { get; init; } = "";
        /// <summary>The output folder (result.json, summary.md, replay/).</summary>
        [JsonPropertyName("out")] public string Out { get; init; } = "";
        [JsonPropertyName("max_queue")] public int MaxQueued { get; init; } = MaxQueue;
        [JsonPropertyName("sustainable_rps")] public double SustainableRps { get; init; }
        [JsonPropertyName("phases")] public List<Phase> Phases { get; init; } = [];
        [JsonPropertyName("lost")] public int Lost { get; init; }
        [JsonPropertyName("defects")] public int Defects { get; init; }
        [JsonPropertyName("valid_after_ok")] public bool ValidAfterOk { get; init; }
        [JsonPropertyName("passed")] public bool Passed => Lost == 0 && Defects == 0 && ValidAfterOk;
    }

    sealed class Sink
    {
        public readonly ConcurrentBag<(FuzzCase Case, Outcome Outcome)> All = [];
    }

    public static async Task<Result> RunAsync(HarnessOptions h, TimeSpan openDuration, double multiple, CancellationToken ct = default)
    {
        var output = new RunOutput(h.Out);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(h.TimeLimit);
        string model = await h.ModelFolderAsync(limit.Token).ConfigureAwait(false);
        await using var server = await ServerProcess.StartAsync(h.ServerDll,
            ServerProcess.ServeArgs(model, [.. h.KeyArgs, "--max-queue", MaxQueue.ToString()]), h.StartTimeout, ct: limit.Token).ConfigureAwait(false);
        using var http = new HttpClient { BaseAddress = server.HttpBase };
        var samples = new ImageSamples();
        await samples.AddFromServerAsync(http, h.ApiKey, limit.Token).ConfigureAwait(false);
        using var sender = new RequestSender(server.HttpBase, server.GrpcAddress, h.ApiKey, TimeSpan.FromMinutes(3));

        var phases = new List<Phase>();
        int n = 0;
        FuzzCase Next() => ValidTraffic.Mixed(Interlocked.Increment(ref n), samples);
        phases.Add(await ClosedAsync("unloaded", sender, Next, 1, requests: 12, TimeSpan.FromMinutes(2), limit.Token).ConfigureAwait(false));
        foreach (int c in new[] { 1, 2, 4 })
            phases.Add(await ClosedAsync($"closed c={c}", sender, Next, c, requests: null, TimeSpan.FromSeconds(10), limit.Token).ConfigureAwait(false));
        double sustainable = phases.Skip(1).Max(p => p.Throughput);
        phases.Add(await OpenAsync($"open {multiple:0.#}x", sender, Next, sustainable * multiple, openDuration, limit.Token).ConfigureAwait(false));
        var (validHttp, validGrpc) = await FuzzRun.ValidAsync(sender).ConfigureAwait(false);

        var result = new Result
        {
            Server = h.ServerDll, Out = output.Folder, SustainableRps = Math.Round(sustainable, 2), Phases = phases, Lost = phases.Sum(p => p.Lost),
            Defects = phases.Sum(p => p.Other.Where(kv => kv.Key.StartsWith("defect", StringComparison.Ordinal)).Sum(kv => kv.Value)),
            ValidAfterOk = validHttp == "200" && validGrpc == "OK",
        };
        output.Write(result, Markdown(result, phases));
        return result;
    }

    static Phase Summarise(string name, double? rate, int? concurrency, double seconds, IReadOnlyCollection<(FuzzCase Case, Outcome Outcome)> all)
    {
        var other = all.Where(x => !ValidTraffic.Accepted(x.Outcome) && !ValidTraffic.Refused(x.Outcome) && !x.Outcome.IsHang && x.Outcome.Kind != "transport")
            .GroupBy(x => (x.Outcome.IsDefect ? "defect " : "") + x.Outcome.Bucket + " " + (x.Outcome.HttpStatus?.ToString() ?? "")).ToDictionary(g => g.Key.Trim(), g => g.Count());
        int accepted = all.Count(x => ValidTraffic.Accepted(x.Outcome));
        return new Phase(name, rate is null ? null : Math.Round(rate.Value, 2), concurrency, Math.Round(seconds, 1), all.Count, accepted,
            all.Count(x => ValidTraffic.Refused(x.Outcome)), other, all.Count(x => x.Outcome.IsHang || x.Outcome.Kind == "transport"),
            Math.Round(accepted / Math.Max(seconds, 1e-9), 2),
            Percentiles.Of(all.Where(x => ValidTraffic.Accepted(x.Outcome)).Select(x => x.Outcome.Milliseconds)),
            Percentiles.Of(all.Where(x => ValidTraffic.Refused(x.Outcome)).Select(x => x.Outcome.Milliseconds)));
    }

    /// <summary>Closed loop: each worker sends its next request when the previous one is answered.</summary>
    public static async Task<Phase> ClosedAsync(string name, RequestSender sender, Func<FuzzCase> next, int concurrency, int? requests, TimeSpan duration, CancellationToken ct)
    {
        var sink = new Sink();
        var sw = Stopwatch.StartNew();
        int left = requests ?? int.MaxValue;
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async _ =>
        {
            while (!ct.IsCancellationRequested && sw.Elapsed < duration && Interlocked.Decrement(ref left) >= 0)
            {
                var c = next();
                sink.All.Add((c, await sender.SendAsync(c, ct).ConfigureAwait(false)));
            }
        })).ConfigureAwait(false);
        return Summarise(name, null, concurrency, sw.Elapsed.TotalSeconds, sink.All);
    }

    /// <summary>Open loop: exponential inter-arrival gaps at <paramref name="rate"/> per second, whatever the server does; latency from the scheduled arrival.</summary>
    public static async Task<Phase> OpenAsync(string name, RequestSender sender, Func<FuzzCase> next, double rate, TimeSpan duration, CancellationToken ct)
    {
        var sink = new Sink();
        var rng = new Random(11);
        var sw = Stopwatch.StartNew();
        var inFlight = new List<Task>();
        double at = 0;
        while (!ct.IsCancellationRequested)
        {
            at += -Math.Log(1 - rng.NextDouble()) / rate;
            if (at > duration.TotalSeconds) break;
            var wait = TimeSpan.FromSeconds(at) - sw.Elapsed;
            if (wait > TimeSpan.Zero) await Task.Delay(wait, ct).ConfigureAwait(false);
            var c = next();
            inFlight.Add(Task.Run(async () => sink.All.Add((c, await sender.SendAsync(c, ct).ConfigureAwait(false))), CancellationToken.None));
        }
        await Task.WhenAll(inFlight).ConfigureAwait(false);
        return Summarise(name, rate, null, duration.TotalSeconds, sink.All);
    }

    static string Markdown(Result r, List<Phase> phases)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# overload: {(r.Passed ? "PASS" : "FAIL")}\n");
        sb.AppendLine($"`{r.Server}`, --max-queue {r.MaxQueued}, mixed valid traffic (t2i and edits, HTTP and gRPC, 64x64, 2 steps). Sustainable rate: {r.SustainableRps:F2} req/s. Lost: {r.Lost}. Valid request after: {(r.ValidAfterOk ? "yes" : "NO")}.\n");
        sb.AppendLine(RunOutput.Table(["phase", "offered req/s", "sent", "accepted", "refused", "other", "lost", "accepted req/s", "accepted p50 / p99 ms", "refusal p50 / p99 ms"],
            phases.Select(p => (IReadOnlyList<string>)[p.Name, p.OfferedRps?.ToString("F2") ?? $"c={p.Concurrency}", p.Sent.ToString(), p.Accepted.ToString(), p.Refused.ToString(),
                p.Other.Count == 0 ? "0" : string.Join(", ", p.Other.Select(kv => $"{kv.Key}: {kv.Value}")), p.Lost.ToString(), p.Throughput.ToString("F2"), p.AcceptedMs.ToString(), p.RefusedMs.ToString()])));
        return sb.ToString();
    }
}
