using System.Diagnostics;
using System.Text;
using System.Text.Json.Serialization;
using Grpc.Core;
using Grpc.Net.Client;
using InferenceServer.Client.V1;

namespace InferenceServer.Reliability;

/// <summary>
/// <c>reliability faults</c>: each case is recorded pass / fail / skipped with what happened, and the run goes on
/// (some cases depend on fixes in flight). Groups: kill (SIGKILL mid-request, restart), model (corrupted folders:
/// serve and generate must fail cleanly), disk (a full filesystem under uploads and generate --out), cli (SIGKILL
/// random-checkpoint mid-write: no partial file under a final name).
/// </summary>
public static partial class FaultsRun
{
    public sealed record Case(
        [property: JsonPropertyName("group")] string Group, [property: JsonPropertyName("name")] string Name,
        [property: JsonPropertyName("expect")] string Expect, [property: JsonPropertyName("status")] string Status,
        [property: JsonPropertyName("observed")] string Observed, [property: JsonPropertyName("seconds")] double Seconds);

    public sealed record Result
    {
        [JsonPropertyName("server")] public string Server { get; init; } = "";
        /// <summary>The output folder (result.json, summary.md, replay/).</summary>
        [JsonPropertyName("out")] public string Out { get; init; } = "";
        [JsonPropertyName("cases")] public List<Case> Cases { get; init; } = [];
        [JsonPropertyName("passed_count")] public int PassedCount => Cases.Count(c => c.Status == "pass");
        [JsonPropertyName("failed_count")] public int FailedCount => Cases.Count(c => c.Status == "fail");
        [JsonPropertyName("passed")] public bool Passed => FailedCount == 0;
    }

    public static readonly string[] Groups = ["kill", "model", "disk", "cli"];

    /// <summary>
    /// Runs the groups in <paramref name="selection"/> (group names, or single model corruptions by name, e.g.
    /// <c>kill,transformer-truncated,vae-missing</c>).
    /// </summary>
    public static async Task<Result> RunAsync(HarnessOptions h, IReadOnlyCollection<string> selection, CancellationToken ct = default)
    {
        var output = new RunOutput(h.Out);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(h.TimeLimit);
        string model = await h.ModelFolderAsync(limit.Token).ConfigureAwait(false);
        var cases = new List<Case>();
        async Task Guard(string group, string name, string expect, Func<Task<(bool? Pass, string Observed)>> run)
        {
            var sw = Stopwatch.StartNew();
            (bool? pass, string observed) = (null, "");
            try
            {
                if (limit.IsCancellationRequested) observed = "skipped: the run's time limit was reached";
                else (pass, observed) = await run().ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                (pass, observed) = (false, $"harness error: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
            }
            string status = pass switch { true => "pass", false => "fail", null => "skipped" };
            cases.Add(new Case(group, name, expect, status, observed, Math.Round(sw.Elapsed.TotalSeconds, 1)));
            Console.Error.WriteLine($"faults: {group}/{name}: {status}: {observed}");
        }

        bool Selected(string group, string? name = null) => selection.Contains(group) || (name is not null && selection.Contains(name));
        if (Selected("kill"))
        {
            await Guard("kill", "sigkill-mid-request", "in-flight gRPC and HTTP calls end with UNAVAILABLE / a connection error within 30 s; a restarted server serves",
                () => KillMidRequestAsync(h, model, limit.Token)).ConfigureAwait(false);
        }
        foreach (var c in ModelCorruptions.All.Where(c => Selected("model", c.Name)))
        {
            string dir = Path.Combine(output.Folder, "corrupt", c.Name);
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
            try
            {
                ModelCorruptions.CopyFolder(model, dir);
                c.Apply(dir);
            }
            catch (Exception e) when (e is IOException or InvalidOperationException or UnauthorizedAccessException or System.Text.Json.JsonException)
            {
                await Guard("model", c.Name, c.What, () => Task.FromResult<(bool?, string)>((null, $"skipped: the corruption could not be made ({e.Message})"))).ConfigureAwait(false);
                continue;
            }
            await Guard("model", $"serve {c.Name}", $"{c.What}: serve exits non-zero with an 'error:' line, no stack trace",
                () => CorruptServeAsync(h, dir, limit.Token)).ConfigureAwait(false);
            await Guard("model", $"generate {c.Name}", $"{c.What}: generate exits 2 with an 'error:' line, no stack trace",
                () => CorruptGenerateAsync(h, dir, output.Folder, limit.Token)).ConfigureAwait(false);
        }
        if (Selected("disk"))
        {
            await using var disk = await SmallDisk.CreateAsync(Path.Combine(output.Folder, "small-fs"), 2 << 20).ConfigureAwait(false);
            await Guard("disk", "multipart-uploads-on-full-tmp", "uploads over 64 KB with TMPDIR on a full filesystem: 503/507, never 500; the server keeps serving",
                () => FullDiskUploadsAsync(h, model, disk, limit.Token)).ConfigureAwait(false);
            await Guard("disk", "generate-out-on-full-fs", "generate --out onto a full filesystem: exit 2, 'error:', no file (or 0-byte file) under the final name",
                () => FullDiskGenerateAsync(h, model, disk, limit.Token)).ConfigureAwait(false);
        }
        if (Selected("cli"))
            foreach (double at in new[] { 0.05, 0.4, 0.8 })
                await Guard("cli", $"random-checkpoint-killed-at-{at:P0}", "SIGKILL mid-write: every file under a final name is complete (same size as an uninterrupted run)",
                    () => KilledCheckpointAsync(h, model, output.Folder, at, limit.Token)).ConfigureAwait(false);

        var result = new Result { Server = h.ServerDll, Out = output.Folder, Cases = cases };
        output.Write(result, Markdown(result));
        return result;
    }

    static async Task<(bool?, string)> KillMidRequestAsync(HarnessOptions h, string model, CancellationToken ct)
    {
        var args = ServerProcess.ServeArgs(model, h.KeyArgs).ToList();
        var server = await ServerProcess.StartAsync(h.ServerDll, args, h.StartTimeout, ct: ct).ConfigureAwait(false);
        var notes = new List<string>();
        bool ok = true;
        try
        {
            using var channel = GrpcChannel.ForAddress(server.GrpcAddress);
            var client = new ImageService.ImageServiceClient(channel);
            var headers = h.ApiKey is null ? null : new Metadata { { "authorization", $"Bearer {h.ApiKey}" } };
            // Enough work (many steps) that the kill lands mid-denoise; the stream's first progress event says it has begun.
            using var call = client.GenerateStream(new GenerateRequest { Prompt = "kill", Width = 256, Height = 256, Steps = 100, Seed = 1 }, headers, cancellationToken: ct);
            using var http = new HttpClient { BaseAddress = server.HttpBase, Timeout = Timeout.InfiniteTimeSpan };
            if (h.ApiKey is not null) http.DefaultRequestHeaders.Authorization = new("Bearer", h.ApiKey);
            async Task NextProgress()
            {
                while (await call.ResponseStream.MoveNext(ct).ConfigureAwait(false) && call.ResponseStream.Current.EventCase != GenerateEvent.EventOneofCase.Progress) { }
            }
            // The HTTP request is sent once the stream's batch runs, so it waits in the queue (or joins the next batch) when the kill lands.
            await NextProgress().ConfigureAwait(false);
            var httpCall = http.PostAsync("v1/images/generations",
                new StringContent("""{"prompt":"kill","size":"256x256","steps":100,"response_format":"b64_json"}""", Encoding.UTF8, "application/json"), ct);
            await NextProgress().ConfigureAwait(false);
            await server.KillAsync().ConfigureAwait(false);
            var sw = Stopwatch.StartNew();
            try
            {
                using var bound = CancellationTokenSource.CreateLinkedTokenSource(ct);
                bound.CancelAfter(TimeSpan.FromSeconds(30));
                while (await call.ResponseStream.MoveNext(bound.Token).ConfigureAwait(false)) { }
                ok = false; notes.Add("gRPC: the stream ended without an error");
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable) { notes.Add($"gRPC: UNAVAILABLE after {sw.ElapsedMilliseconds} ms"); }
            catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && sw.Elapsed >= TimeSpan.FromSeconds(29)) { ok = false; notes.Add("gRPC: no answer within 30 s (hang)"); }
            catch (RpcException e) { ok = false; notes.Add($"gRPC: {e.StatusCode} ({e.Status.Detail}) after {sw.ElapsedMilliseconds} ms"); }
            try
            {
                var r = await httpCall.WaitAsync(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
                notes.Add($"HTTP: {(int)r.StatusCode} (answered before the kill)");
            }
            catch (HttpRequestException e) { notes.Add($"HTTP: connection error ({e.GetBaseException().Message})"); }
            catch (TimeoutException) { ok = false; notes.Add("HTTP: no answer within 30 s (hang)"); }
        }
        finally { await server.DisposeAsync().ConfigureAwait(false); }

        await using var restarted = await ServerProcess.StartAsync(h.ServerDll, args, h.StartTimeout, ct: ct).ConfigureAwait(false);
        using var sender = new RequestSender(restarted.HttpBase, restarted.GrpcAddress, h.ApiKey, TimeSpan.FromSeconds(60));
        var (validHttp, validGrpc) = await FuzzRun.ValidAsync(sender).ConfigureAwait(false);
        notes.Add($"after restart: HTTP {validHttp}, gRPC {validGrpc}");
        ok &= validHttp == "200" && validGrpc == "OK";
        return (ok, string.Join("; ", notes));
    }

    static async Task<(bool?, string)> CorruptServeAsync(HarnessOptions h, string dir, CancellationToken ct)
    {
        // A server that loaded the folder (" warm in ") or logged a load failure and stayed up is stopped after 15 s.
        var r = await CliRun.RunAsync(h.ServerDll, ServerProcess.ServeArgs(dir, h.KeyArgs), TimeSpan.FromMinutes(3), ct,
            stopAfter: l => l.Contains(" warm in ", StringComparison.Ordinal) || l.Contains("crit:", StringComparison.Ordinal), grace: TimeSpan.FromSeconds(15)).ConfigureAwait(false);
        return Verdict(r, expectedExit: null);
    }

    static async Task<(bool?, string)> CorruptGenerateAsync(HarnessOptions h, string dir, string outFolder, CancellationToken ct)
    {
        string file = Path.Combine(outFolder, "corrupt-out.png");
        File.Delete(file);
        var r = await CliRun.RunAsync(h.ServerDll, ["generate", "--model", dir, "--prompt", "x", "--size", "64x64", "--steps", "1", "--device", "cpu", "--out", file],
            TimeSpan.FromMinutes(3), ct).ConfigureAwait(false);
        var (pass, observed) = Verdict(r, expectedExit: 2);
        return (pass, observed + (File.Exists(file) ? $"; wrote {new FileInfo(file).Length} bytes to --out" : ""));
    }

    /// <summary>Pass: the process ended by itself with the expected (or any non-zero) code, an 'error:' line and no stack trace.</summary>
    static (bool?, string) Verdict(CliResult r, int? expectedExit)
    {
        string code = r.ExitCode is { } c ? $"exit {c}" : $"killed ({r.Killed})";
        bool exitOk = r.ExitCode is { } e && (expectedExit is null ? e != 0 : e == expectedExit);
        bool pass = exitOk && r.HasErrorLine && !r.HasStackTrace;
        string error = r.HasErrorLine ? $"'{Short(r.ErrorLine)}'" : "no 'error:' line";
        return (pass, $"{code}, {error}{(r.HasStackTrace ? ", STACK TRACE in output" : "")}, {r.Seconds:F0} s");
    }

    static string Short(string s) => s.Length <= 160 ? s : s[..160] + "...";

    static string Markdown(Result r)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# faults: {(r.Passed ? "PASS" : "FAIL")} ({r.PassedCount} pass, {r.FailedCount} fail, {r.Cases.Count - r.PassedCount - r.FailedCount} skipped)\n");
        sb.AppendLine($"`{r.Server}`\n");
        sb.AppendLine(RunOutput.Table(["group", "case", "status", "observed", "expected", "s"],
            r.Cases.Select(c => (IReadOnlyList<string>)[c.Group, c.Name, c.Status == "fail" ? "**fail**" : c.Status, c.Observed, c.Expect, c.Seconds.ToString("F0")])));
        return sb.ToString();
    }
}
