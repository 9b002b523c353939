using System.Text.Json;

namespace InferenceServer.Reliability;

/// <summary>
/// A saved request: <c>N-CLASS.json</c> (transport, path, headers, content type, what it tests) beside
/// <c>N-CLASS.body</c> (the exact bytes). <c>reliability replay --server DLL FILE.json...</c> sends them again to a fresh server.
/// </summary>
public static class Replay
{
    public static string Save(string dir, FuzzCase c, string serverDll)
    {
        Directory.CreateDirectory(dir);
        string stem = Path.Combine(dir, $"{c.Index:D6}-{c.Class}");
        File.WriteAllBytes(stem + ".body", c.Body);
        File.WriteAllText(stem + ".json", JsonSerializer.Serialize(c, RunOutput.Json));
        return $"reliability replay --server {serverDll} {stem}.json";
    }

    public static FuzzCase Load(string jsonFile)
    {
        var c = JsonSerializer.Deserialize<FuzzCase>(File.ReadAllText(jsonFile), RunOutput.Json)
            ?? throw new InvalidDataException($"{jsonFile}: not a saved case");
        return c with { Body = File.ReadAllBytes(Path.ChangeExtension(jsonFile, ".body")) };
    }

    /// <summary>Starts a server, sends each saved case, and writes one line per case: the answer and whether it is a defect.</summary>
    public static async Task<int> RunAsync(HarnessOptions h, IEnumerable<string> files, TextWriter log, CancellationToken ct)
    {
        string model = await h.ModelFolderAsync(ct).ConfigureAwait(false);
        await using var server = await ServerProcess.StartAsync(h.ServerDll, ServerProcess.ServeArgs(model, h.KeyArgs), h.StartTimeout, ct: ct).ConfigureAwait(false);
        using var sender = new RequestSender(server.HttpBase, server.GrpcAddress, h.ApiKey, TimeSpan.FromSeconds(60));
        int bad = 0;
        foreach (string f in files)
        {
            var c = Load(f);
            var o = await sender.SendAsync(c, ct).ConfigureAwait(false);
            bool failed = o.IsDefect || o.IsHang || o.IsOversizedError || (c.Expect is not null && c.Expect != (o.HttpStatus?.ToString() ?? o.GrpcStatus));
            bad += failed ? 1 : 0;
            string detail = o.Detail is { Length: > 200 } d ? d[..200] + "..." : o.Detail ?? "";
            await log.WriteLineAsync($"{Path.GetFileName(f)}: {c.Name}: {o.Bucket} {o.GrpcStatus} {o.BodyBytes:N0} bytes, {(failed ? "DEFECT" : "ok")} {detail}; server RSS {RunOutput.Mb(server.RssKb())}").ConfigureAwait(false);
        }
        var tail = server.Log().Where(l => l.Contains("fail", StringComparison.OrdinalIgnoreCase) || l.Contains("exception", StringComparison.OrdinalIgnoreCase)).TakeLast(40);
        foreach (var l in tail) await log.WriteLineAsync("  server: " + l).ConfigureAwait(false);
        return bad == 0 ? 0 : 1;
    }
}
