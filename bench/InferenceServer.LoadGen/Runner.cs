using System.Collections.Concurrent;
using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using InferenceServer.Client.V1;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Generation;
using static TorchSharp.torch;

namespace InferenceServer.LoadGen;

/// <summary>Drives a server over gRPC (or the pipeline in-process) with a <see cref="Workload"/> and summarises latencies.</summary>
public static class Runner
{
    sealed class Sink
    {
        public readonly ConcurrentBag<double> Latency = [], Queue = [], Total = [], Batch = [];
        public readonly ConcurrentDictionary<string, int> Errors = new();
        public int Sent, Ok, Images;
    }

    static GrpcChannel Channel(string target) => GrpcChannel.ForAddress(target, new GrpcChannelOptions
    {
        MaxReceiveMessageSize = 512 << 20,
        MaxSendMessageSize = 256 << 20,
        HttpHandler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true, PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan },
    });

    static async Task One(ImageService.ImageServiceClient client, Workload w, int i, Random random, Metadata? headers, Sink sink, long startTimestamp, CancellationToken ct)
    {
        var (width, height) = w.PickSize(random);
        var request = new GenerateRequest
        {
            Prompt = w.Prompt(i), Width = (uint)width, Height = (uint)height, N = (uint)w.Images, Steps = (uint)w.Steps,
            Seed = w.Seed + i, OutputFormat = OutputFormat.Png, RequestId = $"loadgen-{i}",
        };
        Interlocked.Increment(ref sink.Sent);
        try
        {
            var response = await client.GenerateAsync(request, headers, cancellationToken: ct);
            sink.Latency.Add(Stopwatch.GetElapsedTime(startTimestamp).TotalMilliseconds);
            sink.Queue.Add(response.Timings?.QueueMs ?? 0);
            sink.Total.Add(response.Timings?.TotalMs ?? 0);
            sink.Batch.Add(response.BatchSize);
            Interlocked.Increment(ref sink.Ok);
            Interlocked.Add(ref sink.Images, response.Images.Count);
        }
        catch (RpcException e) when (!ct.IsCancellationRequested || e.StatusCode != StatusCode.Cancelled)
        {
            sink.Errors.AddOrUpdate(e.StatusCode.ToString(), 1, (_, c) => c + 1);
        }
        catch (RpcException) { }   // cancelled by the end of the run
    }

    /// <summary>Closed loop: <paramref name="concurrency"/> workers, each sending its next request when the previous one is answered.</summary>
    public static async Task<RunResult> ClosedAsync(string target, string? apiKey, Workload w, int concurrency, TimeSpan duration, int? requests, string label)
    {
        using var channel = Channel(target);
        var client = new ImageService.ImageServiceClient(channel);
        var headers = apiKey is null ? null : new Metadata { { "authorization", $"Bearer {apiKey}" } };
        var sink = new Sink();
        int next = -1;
        var clock = Stopwatch.StartNew();
        using var stop = new CancellationTokenSource(requests is null ? duration : Timeout.InfiniteTimeSpan);
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(worker => Task.Run(async () =>
        {
            var random = new Random(worker + 1);
            while (!stop.IsCancellationRequested)
            {
                int i = Interlocked.Increment(ref next);
                if (requests is { } max && i >= max) break;
                await One(client, w, i, random, headers, sink, Stopwatch.GetTimestamp(), CancellationToken.None);
            }
        })));
        return Summarise(sink, w, label, "closed", target, clock.Elapsed, concurrency, null);
    }

    /// <summary>
    /// Open loop: Poisson arrivals at <paramref name="rate"/> requests/s for <paramref name="duration"/>, whatever the server does.
    /// Latency counts from each request's scheduled arrival, so a slow client loop cannot hide queueing (no coordinated omission).
    /// </summary>
    public static async Task<RunResult> OpenAsync(string target, string? apiKey, Workload w, double rate, TimeSpan duration, string label)
    {
        using var channel = Channel(target);
        var client = new ImageService.ImageServiceClient(channel);
        var headers = apiKey is null ? null : new Metadata { { "authorization", $"Bearer {apiKey}" } };
        var sink = new Sink();
        var random = new Random((int)w.Seed);
        var inFlight = new List<Task>();
        var clock = Stopwatch.StartNew();
        long origin = Stopwatch.GetTimestamp();
        double at = 0;
        for (int i = 0; ; i++)
        {
            at += -Math.Log(1 - random.NextDouble()) / rate;                  // exponential inter-arrival times
            if (at > duration.TotalSeconds) break;
            var wait = TimeSpan.FromSeconds(at) - Stopwatch.GetElapsedTime(origin);
            if (wait > TimeSpan.Zero) await Task.Delay(wait);
            long scheduled = origin + (long)(at * Stopwatch.Frequency);
            inFlight.Add(One(client, w, i, new Random(i), headers, sink, scheduled, CancellationToken.None));
        }
        await Task.WhenAll(inFlight);
        return Summarise(sink, w, label, "open", target, clock.Elapsed, null, rate);
    }

    /// <summary>The same workload through <see cref="GenerationPipeline"/> in this process, one request at a time: the baseline for server overhead.</summary>
    public static RunResult InProcess(string modelDir, string dtype, Workload w, TimeSpan duration, int? requests, string label)
    {
        InferenceServer.Models.Runtime.TorchRuntime.EnsureInitialized();
        using var model = Flux2ModelFolder.Load(modelDir, dtype == "fp32" ? ScalarType.Float32 : ScalarType.BFloat16);
        using var pipeline = new GenerationPipeline(model);
        var sink = new Sink();
        var random = new Random(1);
        pipeline.Generate(new GenerationRequest { Prompt = "warm-up", Size = new SizeRequest("64x64"), Steps = 1, Seed = 0 });
        var clock = Stopwatch.StartNew();
        for (int i = 0; requests is { } max ? i < max : clock.Elapsed < duration; i++)
        {
            var (width, height) = w.PickSize(random);
            long t0 = Stopwatch.GetTimestamp();
            sink.Sent++;
            var r = pipeline.Generate(new GenerationRequest
            {
                Prompt = w.Prompt(i), Size = new SizeRequest($"{width}x{height}"), Count = w.Images, Steps = w.Steps, Seed = w.Seed + i,
            });
            double ms = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            sink.Latency.Add(ms);
            sink.Total.Add(ms);
            sink.Ok++;
            sink.Images += r.Images.Count;
        }
        return Summarise(sink, w, label, "in-process", modelDir, clock.Elapsed, 1, null);
    }

    static RunResult Summarise(Sink s, Workload w, string label, string mode, string target, TimeSpan elapsed, int? concurrency, double? rate) => new()
    {
        Label = label, Mode = mode, Target = target, Concurrency = concurrency, Rate = rate,
        Sizes = string.Join(",", w.Sizes.Select(z => $"{z.Width}x{z.Height}:{z.Weight}")), Steps = w.Steps, ImagesPerRequest = w.Images,
        DurationSeconds = elapsed.TotalSeconds, Sent = s.Sent, Ok = s.Ok, Errors = new(s.Errors),
        Throughput = s.Ok / elapsed.TotalSeconds, ImagesPerSecond = s.Images / elapsed.TotalSeconds,
        Latency = Percentiles.Of(s.Latency.ToArray()), ServerQueue = Percentiles.Of(s.Queue.ToArray()), ServerTotal = Percentiles.Of(s.Total.ToArray()),
        MeanBatchSize = s.Batch.IsEmpty ? 1 : s.Batch.Average(),
    };
}
