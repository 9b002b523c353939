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

    [Fact]
    public void Repeated_batches_with_cancellations_and_failures_leave_no_live_tensors()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var edit = BatchGenerationTests.Req("make it red", 3, n: 2, steps: 2, refs: [BatchGenerationTests.Png(96, 64, 1)]);
        void Round(int i)
        {
            using var cts = new CancellationTokenSource();
            var entries = BatchGenerationTests.Abc.Select(r => new BatchEntry(p.Prepare(r with { Seed = i }), default, PreviewEvery: 2)).ToArray();
            entries[2] = entries[2] with { CancellationToken = cts.Token };
            var outcomes = p.GenerateBatch(entries, s =>
            {
                if (s.Entry == 2 && s.Step == 0) cts.Cancel();
                if (i % 3 == 2 && s.Step == 1) throw new InvalidOperationException("failure inside the batch");
            });
            Assert.IsAssignableFrom<OperationCanceledException>(outcomes[2].Error);
            Assert.Equal(i % 3 != 2, outcomes[0].Result is not null);
            Assert.NotNull(p.GenerateBatch([new BatchEntry(p.Prepare(edit with { Seed = i }), default)])[0].Result);
        }
        for (int i = 0; i < 3; i++) Round(i);
        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        long tensors0 = Tensor.TotalCount;
        for (int i = 0; i < 4; i++) p.Prepare(BatchGenerationTests.Abc[0]);
        Assert.Equal(tensors0, Tensor.TotalCount);                                   // Prepare does no tensor work
        long rss0 = Process.GetCurrentProcess().WorkingSet64;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 12; i++) Round(i);
        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        long rss1 = Process.GetCurrentProcess().WorkingSet64;
        output.WriteLine($"12 rounds (a 3-entry batch with a cancellation, every third failing, then an edit) in {sw.Elapsed.TotalSeconds:F1} s; " +
            $"live tensors {tensors0} -> {Tensor.TotalCount}; RSS {rss0 >> 20} -> {rss1 >> 20} MiB");
        Assert.Equal(tensors0, Tensor.TotalCount);
        Assert.True(rss1 - rss0 < 64 << 20, $"RSS grew by {(rss1 - rss0) >> 20} MiB");
    }
}
