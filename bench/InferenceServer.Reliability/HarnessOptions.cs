using System.Diagnostics;

namespace InferenceServer.Reliability;

/// <summary>What every verb shares: the server build to drive, the model it serves, auth, the output folder, a time bound.</summary>
public sealed record HarnessOptions
{
    /// <summary>Path to inference-server.dll of any build (an old commit included): only its command line is used.</summary>
    public required string ServerDll { get; init; }
    /// <summary>A tiny model folder; null: one is written under the output folder with the server's random-checkpoint.</summary>
    public string? Model { get; init; }
    public string? ApiKey { get; init; }
    public required string Out { get; init; }
    /// <summary>The whole verb stops (and reports what it has) after this.</summary>
    public TimeSpan TimeLimit { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>How long a server may take from start to /readyz 200.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromMinutes(3);

    public IEnumerable<string> KeyArgs => ApiKey is null ? [] : ["--api-key", ApiKey];

    /// <summary>The model folder to serve, writing the tiny random one (FP32) when none was given.</summary>
    public async Task<string> ModelFolderAsync(CancellationToken ct)
    {
        if (Model is not null) return Model;
        string dir = Path.Combine(Path.GetFullPath(Out), "model");
        string done = dir + ".complete";   // beside the folder, not in it: the loader sees only what random-checkpoint wrote
        if (File.Exists(done)) return dir;
        var r = await CliRun.RunAsync(ServerDll, ["random-checkpoint", "--preset", "tiny", "--dtype", "fp32", "--seed", "5", "--out", dir], TimeSpan.FromMinutes(5), ct).ConfigureAwait(false);
        if (r.ExitCode != 0) throw new InvalidOperationException($"random-checkpoint failed ({r.ExitCode}):\n{r.Output}");
        File.WriteAllText(done, "");
        return dir;
    }
}

/// <summary>One finished CLI run of the server executable: exit code (null: killed, see <see cref="Killed"/>) and merged output.</summary>
public sealed record CliResult(int? ExitCode, string Output, double Seconds, string? Killed = null)
{
    /// <summary>A .NET stack trace in the output ("   at Namespace.Type.Method(...)"): a CLI error must be one clean line.</summary>
    public bool HasStackTrace => Output.Split('\n').Any(l => l.TrimStart().StartsWith("at ", StringComparison.Ordinal) && l.Contains('(') && l.Contains('.'));
    public bool HasErrorLine => Output.Split('\n').Any(l => l.StartsWith("error:", StringComparison.OrdinalIgnoreCase));
    public string ErrorLine => Output.Split('\n').FirstOrDefault(l => l.StartsWith("error:", StringComparison.OrdinalIgnoreCase))?.Trim() ?? "";
}

public static class CliRun
{
    /// <summary>
    /// Runs <c>dotnet SERVER.dll ARGS</c> to its end, or kills it at <paramref name="limit"/>, or <paramref name="grace"/>
    /// after a line for which <paramref name="stopAfter"/> is true (a server that loaded, or logged a failure and stayed up).
    /// </summary>
    public static async Task<CliResult> RunAsync(string serverDll, IEnumerable<string> args, TimeSpan limit, CancellationToken ct,
        IReadOnlyDictionary<string, string>? environment = null, Func<string, bool>? stopAfter = null, TimeSpan? grace = null)
    {
        var psi = ServerProcess.Dotnet(serverDll, args);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var output = new System.Text.StringBuilder();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(limit);
        string? reason = null;
        void Line(string? l)
        {
            if (l is null) return;
            lock (output) output.AppendLine(l);
            if (stopAfter is not null && reason is null && stopAfter(l))
            {
                reason = $"still running {(grace ?? TimeSpan.Zero).TotalSeconds:0} s after: {l.Trim()}";
                timeout.CancelAfter(grace ?? TimeSpan.Zero);
            }
        }
        p.OutputDataReceived += (_, e) => Line(e.Data);
        p.ErrorDataReceived += (_, e) => Line(e.Data);
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        try { await p.WaitForExitAsync(timeout.Token).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
            lock (output) return new CliResult(null, output.ToString(), sw.Elapsed.TotalSeconds, reason ?? $"no exit within {limit.TotalSeconds:0} s");
        }
        p.WaitForExit();   // drains the redirected streams
        lock (output) return new CliResult(p.ExitCode, output.ToString(), sw.Elapsed.TotalSeconds);
    }
}
