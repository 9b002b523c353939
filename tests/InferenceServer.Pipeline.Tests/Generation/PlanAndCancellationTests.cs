using InferenceServer.Models.Runtime;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Pipeline.Tests.Images;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Generation;

/// <summary>
/// <see cref="GenerationPipeline.Plan"/> sizes references from their headers without decoding them (servers admit first,
/// then decode), and a cancelled entry stops inside the VAE, within one block, not after a whole decode.
/// </summary>
public sealed class PlanAndCancellationTests(TinyModelFolders folders) : IClassFixture<TinyModelFolders>
{
    static byte[] Png(int w, int h, int seed) => ImageCodec.Encode(TestImages.Scene(w, h, seed), ImageFormat.Png).Bytes;

    /// <summary>A PNG whose header is valid and whose pixel data is not: only a decode can find out.</summary>
    static byte[] DamagedPixels()
    {
        var garbage = new byte[200];
        new Random(3).NextBytes(garbage);
        return TestImages.Png(64, 64, 8, 2, [], idatOverride: garbage);
    }

    [Fact]
    public void Plan_reads_headers_only_and_budgets_the_capped_pixels()
    {
        using var pipeline = new GenerationPipeline(folders.BflModel, new PipelineOptions { SingleReferencePixels = 64 * 64, MultiReferencePixels = 32 * 32 });
        var one = pipeline.Plan(GenerationPipelineTests.Request(refs: [Png(128, 96, 1)]));
        Assert.False(one.ReferencesDecoded);
        var (w, h) = ImageCodec.CappedSize(128, 96, 64 * 64);
        Assert.Equal(3L * w * h, one.ReferenceBytes);

        var two = pipeline.Plan(GenerationPipelineTests.Request(refs: [Png(128, 96, 1), Png(40, 20, 2)]));
        Assert.Equal(3L * 36 * 27 + 3L * 40 * 20, two.ReferenceBytes);     // 128x96 capped at 32^2: sqrt(1024/12288) = 0.2887

        var damaged = pipeline.Plan(GenerationPipelineTests.Request(refs: [Png(64, 64, 3), DamagedPixels()]));
        Assert.Equal(2 * 3L * 32 * 32, damaged.ReferenceBytes);                // both 64x64, capped at 32^2
        var e = Assert.Throws<RequestException>(() => pipeline.DecodeReferences(damaged));
        Assert.Equal("image", e.Field);
        Assert.StartsWith("image 2: ", e.Message);
        Assert.False(damaged.ReferencesDecoded);

        pipeline.DecodeReferences(one);
        Assert.True(one.ReferencesDecoded);
        Assert.True(pipeline.Plan(GenerationPipelineTests.Request()).ReferencesDecoded);  // nothing to decode
    }

    [Fact]
    public void A_batch_decodes_planned_references_itself_and_a_damaged_one_fails_only_its_entry()
    {
        using var pipeline = new GenerationPipeline(folders.BflModel);
        var reference = Png(64, 64, 4);
        var good = pipeline.Plan(GenerationPipelineTests.Request(refs: [reference]));
        var bad = pipeline.Plan(GenerationPipelineTests.Request(refs: [DamagedPixels()]) with { Size = new SizeRequest("64x64") });
        var outcomes = pipeline.GenerateBatch([new BatchEntry(good, CancellationToken.None), new BatchEntry(bad, CancellationToken.None)]);
        Assert.True(outcomes[0].Succeeded, outcomes[0].Error?.Message);
        var e = Assert.IsType<RequestException>(outcomes[1].Error);
        Assert.StartsWith("image 1: ", e.Message);

        var alone = pipeline.Generate(GenerationPipelineTests.Request(refs: [reference]));
        Assert.Equal(alone.Images[0].Image.Bytes, outcomes[0].Result!.Images[0].Image.Bytes);
    }

    [Fact]
    public void A_cancelled_token_stops_the_vae_between_blocks()
    {
        var vae = folders.BflModel.Vae;
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        using var scope = NewDisposeScope();
        using (ComputeCancellation.Use(cts.Token))
        {
            Assert.ThrowsAny<OperationCanceledException>(() => vae.Decode(zeros(1, 128, 4, 4)));
            Assert.ThrowsAny<OperationCanceledException>(() => vae.Encode(zeros(1, 3, 64, 64)));
        }
        using var decoded = vae.Decode(zeros(1, 128, 4, 4));                 // the scope ended: no token any more
        Assert.Equal(new long[] { 1, 3, 64, 64 }, decoded.shape);
    }

    [Fact]
    public void An_entry_cancelled_during_its_decode_stops_within_one_block_and_its_batch_mate_finishes()
    {
        using var pipeline = new GenerationPipeline(folders.BflModel);
        var blocks = folders.BflModel.Vae.named_modules().Where(m => m.name.StartsWith("decoder.up.", StringComparison.Ordinal) && m.name.Contains(".block.", StringComparison.Ordinal)
            && m.name.Count(c => c == '.') == 4).Select(m => m.module).ToList();
        Assert.NotEmpty(blocks);
        using var cancelled = new CancellationTokenSource();
        int calls = 0, callsAtCancel = -1;
        var hooks = blocks.Select(b => ((nn.Module<Tensor, Tensor>)b).register_forward_hook((_, _, output) =>
        {
            // The first decoder block of the batch's final decode (no references, no previews: nothing decodes earlier).
            if (Interlocked.Increment(ref calls) == 1) { callsAtCancel = calls; cancelled.Cancel(); }
            return output;
        })).ToList();
        try
        {
            var first = pipeline.Plan(GenerationPipelineTests.Request(seed: 1));
            var second = pipeline.Plan(GenerationPipelineTests.Request(seed: 2));
            var outcomes = pipeline.GenerateBatch([new BatchEntry(first, cancelled.Token), new BatchEntry(second, CancellationToken.None)]);
            Assert.IsAssignableFrom<OperationCanceledException>(outcomes[0].Error);
            Assert.True(outcomes[1].Succeeded, outcomes[1].Error?.Message);
            // Entry 0 ran one block, then stopped; entry 1 ran all of them.
            Assert.Equal(1, callsAtCancel);
            Assert.Equal(1 + blocks.Count, calls);
        }
        finally { foreach (var h in hooks) h.remove(); }
    }

    [Fact]
    public void A_batch_whose_every_entry_is_cancelled_stops_between_transformer_blocks()
    {
        using var pipeline = new GenerationPipeline(folders.BflModel);
        var modules = folders.BflModel.Transformer.named_modules().ToDictionary(m => m.name, m => m.module);
        var firstDouble = (nn.Module<Tensor, Tensor>)modules.First(m => m.Key.StartsWith("double_blocks.0.", StringComparison.Ordinal) && m.Value is TorchSharp.Modules.Linear).Value;
        var firstSingle = (nn.Module<Tensor, Tensor>)modules.First(m => m.Key.StartsWith("single_blocks.0.", StringComparison.Ordinal) && m.Value is TorchSharp.Modules.Linear).Value;
        using var a = new CancellationTokenSource();
        using var b = new CancellationTokenSource();
        int singleCalls = 0;
        var hooks = new[]
        {
            // Inside the first double block of the first step, both requests go away.
            firstDouble.register_forward_hook((_, _, output) => { a.Cancel(); b.Cancel(); return output; }),
            firstSingle.register_forward_hook((_, _, output) => { Interlocked.Increment(ref singleCalls); return output; }),
        };
        try
        {
            var outcomes = pipeline.GenerateBatch([
                new BatchEntry(pipeline.Plan(GenerationPipelineTests.Request(seed: 1, steps: 1)), a.Token),
                new BatchEntry(pipeline.Plan(GenerationPipelineTests.Request(seed: 2, steps: 1)), b.Token)]);
            Assert.All(outcomes, o => Assert.IsAssignableFrom<OperationCanceledException>(o.Error));
            Assert.Equal(0, singleCalls);                                     // stopped before the single blocks of that step
        }
        finally { foreach (var h in hooks) h.remove(); }

        // One request cancelled, its batch-mate live: the step finishes for both, the live one gets its image.
        using var c = new CancellationTokenSource();
        var hook = firstDouble.register_forward_hook((_, _, output) => { c.Cancel(); return output; });
        try
        {
            var outcomes = pipeline.GenerateBatch([
                new BatchEntry(pipeline.Plan(GenerationPipelineTests.Request(seed: 1, steps: 1)), c.Token),
                new BatchEntry(pipeline.Plan(GenerationPipelineTests.Request(seed: 2, steps: 1)), CancellationToken.None)]);
            Assert.IsAssignableFrom<OperationCanceledException>(outcomes[0].Error);
            Assert.True(outcomes[1].Succeeded, outcomes[1].Error?.Message);
        }
        finally { hook.remove(); }
    }
}
