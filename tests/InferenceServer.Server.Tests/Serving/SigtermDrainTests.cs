using System.Diagnostics;
using System.Text.RegularExpressions;
using Grpc.Core;
using Grpc.Net.Client;
using InferenceServer.Client.V1;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Serving;

/// <summary>The real executable: `inference-server serve`, requests in flight, then SIGTERM.</summary>
public sealed partial class SigtermDrainTests(ITestOutputHelper output)
{
    [GeneratedRegex(@"Now listening on: http://[^:]+:(\d+)")]
    private static partial Regex Listening();

    [Fact]
    public async Task Sigterm_finishes_every_in_flight_request_then_exits_cleanly()
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            ArgumentList = { Path.Combine(AppContext.BaseDirectory, "inference-server.dll"), "serve", "--model", TinyModel.Folder, "--model-name", "tiny",
                "--dtype", "fp32", "--bind", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--max-batch", "1" },
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var process = Process.Start(psi)!;
        var log = new List<string>();
        var ports = new List<int>();
        var bothPorts = new TaskCompletionSource();
        void Line(string? l)
        {
            if (l is null) return;
            lock (log)
            {
                log.Add(l);
                if (Listening().Match(l) is { Success: true } m) { ports.Add(int.Parse(m.Groups[1].Value)); if (ports.Count == 2) bothPorts.TrySetResult(); }
            }
        }
        process.OutputDataReceived += (_, e) => Line(e.Data);
        process.ErrorDataReceived += (_, e) => Line(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await bothPorts.Task.WaitAsync(TimeSpan.FromMinutes(2));
            int httpPort = ports[0], grpcPort = ports[1];
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}/") };
            var sw = Stopwatch.StartNew();
            while ((await http.GetAsync("readyz")).StatusCode != System.Net.HttpStatusCode.OK)
            {
                Assert.True(sw.Elapsed < TimeSpan.FromMinutes(2), "server never became ready");
                await Task.Delay(100);
            }
            using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{grpcPort}");
            var client = new ImageService.ImageServiceClient(channel);
            // Streams, so the test can wait for each request's admission (its Queued event) instead of for time.
            var calls = Enumerable.Range(0, 3).Select(i => client.GenerateStream(new GenerateRequest
            {
                Prompt = $"drain {i}", Width = 256, Height = 256, Steps = 12, Seed = i,
            })).ToList();
            foreach (var call in calls)
            {
                Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None), "stream ended before admission");
                Assert.Equal(GenerateEvent.EventOneofCase.Queued, call.ResponseStream.Current.EventCase);
            }

            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString()])) await kill.WaitForExitAsync();
            var responses = await Task.WhenAll(calls.Select(ReadResult)).WaitAsync(TimeSpan.FromMinutes(3));
            Assert.All(responses, r => Assert.Equal(256u, Assert.Single(r.Images).Width));
            foreach (var call in calls) call.Dispose();
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(1));
            Assert.Equal(0, process.ExitCode);
            lock (log) Assert.Contains(log, l => l.Contains("draining", StringComparison.Ordinal));
        }
        finally
        {
            lock (log) foreach (var l in log.TakeLast(30)) output.WriteLine(l);
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    static async Task<GenerateResponse> ReadResult(AsyncServerStreamingCall<GenerateEvent> call)
    {
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
            if (call.ResponseStream.Current.EventCase == GenerateEvent.EventOneofCase.Result) return call.ResponseStream.Current.Result;
        throw new InvalidOperationException("stream ended without a result");
    }
}
