using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace InferenceServer.Reliability;

/// <summary>
/// A real <c>inference-server serve</c> process (any build: the harness only knows its command line) on loopback with
/// free ports. The ports come from Kestrel's "Now listening on:" lines; which one is HTTP is found by asking each for
/// /healthz over HTTP/1.1 (the gRPC port speaks HTTP/2 only), so no log order is assumed.
/// </summary>
public sealed partial class ServerProcess : IAsyncDisposable
{
    [GeneratedRegex(@"Now listening on: http://[^:]+:(\d+)")]
    private static partial Regex Listening();

    readonly Process process;
    readonly List<string> log = [];
    readonly List<int> ports = [];
    readonly TaskCompletionSource bothPorts = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int HttpPort { get; private set; }
    public int GrpcPort { get; private set; }
    public int Pid => process.Id;
    public Uri HttpBase => new($"http://127.0.0.1:{HttpPort}/");
    public string GrpcAddress => $"http://127.0.0.1:{GrpcPort}";
    public bool HasExited => process.HasExited;
    public int ExitCode => process.ExitCode;

    ServerProcess(Process process) => this.process = process;

    /// <summary>The arguments of <c>serve</c> on loopback with free ports; <paramref name="extra"/> follows (--api-key ...).</summary>
    public static IEnumerable<string> ServeArgs(string model, IEnumerable<string> extra) =>
        ["serve", "--model", model, "--model-name", "tiny", "--dtype", "fp32", "--bind", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", .. extra];

    /// <summary>Starts the server and returns once it answers /readyz with 200 (or throws with the log's tail).</summary>
    public static async Task<ServerProcess> StartAsync(string serverDll, IEnumerable<string> args, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null, CancellationToken ct = default)
    {
        var psi = Dotnet(serverDll, args);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        var server = new ServerProcess(Process.Start(psi)!);
        try
        {
            await server.WaitReadyAsync(timeout, ct).ConfigureAwait(false);
            return server;
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary><c>dotnet SERVER.dll ARGS</c> with both streams redirected.</summary>
    public static ProcessStartInfo Dotnet(string serverDll, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(serverDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        // Plain lines: the port regex and the "no stack trace" checks read the console log.
        psi.Environment["Logging__Console__FormatterName"] = "simple";
        return psi;
    }

    async Task WaitReadyAsync(TimeSpan timeout, CancellationToken ct)
    {
        void Line(string? l)
        {
            if (l is null) return;
            lock (log)
            {
                if (log.Count < 20_000) log.Add(l);
                if (Listening().Match(l) is { Success: true } m && ports.Count < 2)
                {
                    ports.Add(int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
                    if (ports.Count == 2) bothPorts.TrySetResult();
                }
            }
        }
        process.OutputDataReceived += (_, e) => Line(e.Data);
        process.ErrorDataReceived += (_, e) => Line(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        var exited = process.WaitForExitAsync(limit.Token);
        if (await Task.WhenAny(bothPorts.Task, exited).ConfigureAwait(false) != bothPorts.Task || limit.IsCancellationRequested)
            throw new InvalidOperationException($"the server never listened on two ports{ExitNote()}:\n{Tail(40)}");

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        HttpPort = 0;
        foreach (int p in ports)
            try
            {
                using var r = await http.GetAsync($"http://127.0.0.1:{p}/healthz", limit.Token).ConfigureAwait(false);
                HttpPort = p;
                break;
            }
            catch (HttpRequestException) { }   // the HTTP/2-only gRPC port drops an HTTP/1.1 request
        if (HttpPort == 0) throw new InvalidOperationException($"neither port answered HTTP/1.1 /healthz:\n{Tail(40)}");
        GrpcPort = ports.First(p => p != HttpPort);

        while (true)
        {
            if (process.HasExited) throw new InvalidOperationException($"the server exited before it was ready{ExitNote()}:\n{Tail(40)}");
            if (limit.IsCancellationRequested) throw new TimeoutException($"the server was not ready within {timeout}:\n{Tail(40)}");
            try
            {
                using var r = await http.GetAsync(new Uri(HttpBase, "readyz"), limit.Token).ConfigureAwait(false);
                if (r.IsSuccessStatusCode) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { }
            await Task.Delay(100, CancellationToken.None).ConfigureAwait(false);   // a poll interval, not a correctness wait
        }
    }

    string ExitNote() => process.HasExited ? $" (exit code {process.ExitCode})" : "";

    /// <summary>Resident set size in KiB from /proc/PID/status (VmRSS); null once the process is gone.</summary>
    public long? RssKb()
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{process.Id}/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
        }
        catch (IOException) { }
        return null;
    }

    /// <summary>
    /// Waits until RSS stops falling: samples every <paramref name="interval"/> and returns the first that is not below
    /// the lowest of the previous <paramref name="window"/> samples by more than 1 %, or the last sample at the deadline.
    /// The allocator and the GC give memory back lazily after a burst, so "after" is read once it has settled.
    /// </summary>
    public async Task<long> SettledRssKbAsync(TimeSpan deadline, TimeSpan interval, int window = 5)
    {
        var sw = Stopwatch.StartNew();
        var samples = new List<long>();
        while (true)
        {
            long rss = RssKb() ?? 0;
            samples.Add(rss);
            if (samples.Count > window)
            {
                long lowest = samples.SkipLast(1).TakeLast(window).Min();
                long highest = samples.TakeLast(window + 1).Max();
                if (rss >= lowest * 0.99 && highest <= lowest * 1.02) return samples.TakeLast(window + 1).Min();
            }
            if (sw.Elapsed > deadline) return samples.TakeLast(Math.Min(samples.Count, window + 1)).Min();
            await Task.Delay(interval).ConfigureAwait(false);
        }
    }

    public string Tail(int lines)
    {
        lock (log) return string.Join('\n', log.TakeLast(lines));
    }

    public IReadOnlyList<string> Log()
    {
        lock (log) return [.. log];
    }

    /// <summary>SIGKILL, as a crash or the OOM killer would.</summary>
    public async Task KillAsync()
    {
        if (!process.HasExited) process.Kill(entireProcessTree: false);
        await process.WaitForExitAsync().ConfigureAwait(false);
    }

    /// <summary>SIGTERM (the server drains), then SIGKILL if it has not exited within <paramref name="grace"/>.</summary>
    public async Task StopAsync(TimeSpan grace)
    {
        if (process.HasExited) return;
        using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync().ConfigureAwait(false);
        try { await process.WaitForExitAsync().WaitAsync(grace).ConfigureAwait(false); }
        catch (TimeoutException) { await KillAsync().ConfigureAwait(false); }
    }

    public async ValueTask DisposeAsync()
    {
        try { await StopAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false); }
        catch (InvalidOperationException) { }   // never started
        process.Dispose();
    }
}
