using System.Diagnostics;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Flux2;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Tests.Flux2;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Generation;

/// <summary>Process-wide memory over hundreds of generations: runs alone so no other test's allocations count.</summary>
[Collection(RunAlone.Name)]
public class GenerationMemoryTests(TinyModelFolders folders, ITestOutputHelper output) : IClassFixture<TinyModelFolders>
{
    [Fact]
    public void Two_hundred_generations_do_not_grow_memory()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var req = GenerationPipelineTests.Request(steps: 1);
        for (int i = 0; i < 20; i++) p.Generate(req with { Seed = i });
        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        long managed0 = GC.GetTotalMemory(true);
        long rss0 = Process.GetCurrentProcess().WorkingSet64;
        long tensors0 = Tensor.TotalCount;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 200; i++) p.Generate(req with { Seed = i });
        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        long managed1 = GC.GetTotalMemory(true);
        long rss1 = Process.GetCurrentProcess().WorkingSet64;
        output.WriteLine($"200 generations in {sw.Elapsed.TotalSeconds:F1} s; managed {managed0 >> 10} -> {managed1 >> 10} KiB; RSS {rss0 >> 20} -> {rss1 >> 20} MiB");
        Assert.True(managed1 - managed0 < 8 << 20, $"managed memory grew by {(managed1 - managed0) >> 10} KiB");
        Assert.True(rss1 - rss0 < 64 << 20, $"RSS grew by {(rss1 - rss0) >> 20} MiB");
        for (int i = 0; i < 200; i++) p.Generate(req with { Seed = i });
        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        long rss2 = Process.GetCurrentProcess().WorkingSet64;
        output.WriteLine($"200 more: RSS {rss1 >> 20} -> {rss2 >> 20} MiB; live tensors {tensors0} -> {Tensor.TotalCount}");
    }
}
