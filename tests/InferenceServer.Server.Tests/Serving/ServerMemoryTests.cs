using System.Diagnostics;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Serving;

/// <summary>Process-wide memory across hundreds of requests through the whole server path (admission, queue, engine, pipeline).</summary>
[Collection(RunAlone.Name)]
public sealed class ServerMemoryTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Five_hundred_sequential_requests_keep_memory_flat()
    {
        await using var server = await RunningServer.StartAsync();
        ImageJobRequest Job(int i) => new()
        {
            RequestId = $"mem-{i}",
            Generation = new GenerationRequest { Prompt = $"prompt {i % 7}", Seed = i, Size = new SizeRequest("64x64"), Steps = 1 },
        };
        // Warm-up: RSS rises by ~90 MiB over the first ~500 requests (native allocator pools of libtorch/libvips filling up),
        // then stays flat (measured to 1,500 requests: +12 MiB from 500 to 1,000, +0 from 1,000 to 1,500).
        for (int i = 0; i < 500; i++) await server.Scheduler.GenerateAsync(Job(i));
        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        long managed0 = GC.GetTotalMemory(true), rss0 = Process.GetCurrentProcess().WorkingSet64, tensors0 = Tensor.TotalCount;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 500; i++)
        {
            await server.Scheduler.GenerateAsync(Job(500 + i));
            if (i % 100 == 99) output.WriteLine($"after {i + 1}: RSS {Process.GetCurrentProcess().WorkingSet64 >> 20} MiB");
        }
        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        long managed1 = GC.GetTotalMemory(true), rss1 = Process.GetCurrentProcess().WorkingSet64, tensors1 = Tensor.TotalCount;
        output.WriteLine($"500 requests in {sw.Elapsed.TotalSeconds:F1} s; managed {managed0 >> 10} -> {managed1 >> 10} KiB; " +
                         $"RSS {rss0 >> 20} -> {rss1 >> 20} MiB; live tensors {tensors0} -> {tensors1}");
        Assert.True(managed1 - managed0 < 8 << 20, $"managed memory grew by {(managed1 - managed0) >> 10} KiB");
        Assert.True(rss1 - rss0 < 48L << 20, $"RSS grew by {(rss1 - rss0) >> 20} MiB");
        Assert.True(tensors1 - tensors0 <= 16, $"live tensors grew from {tensors0} to {tensors1}");
    }
}
