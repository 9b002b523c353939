using System.Diagnostics;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Flux2;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Generation;

/// <summary><see cref="GenerationPipeline.GenerateBatch"/>: several requests in one DiT batch give the bytes each gets alone.</summary>
public class BatchGenerationTests(TinyModelFolders folders, ITestOutputHelper output) : IClassFixture<TinyModelFolders>
{
    internal static GenerationRequest Req(string prompt, long seed, int n = 1, int steps = 3, string size = "64x64", IReadOnlyList<byte[]>? refs = null) =>
        new() { Prompt = prompt, Seed = seed, Count = n, Steps = steps, Size = new SizeRequest(size), References = refs ?? [] };

    internal static readonly GenerationRequest[] Abc = [Req("a red bicycle", 100, n: 2), Req("a cat on a sofa", 7), Req("a blue house at night", 55)];

    internal static byte[] Png(int w, int h, int salt)
    {
        var rgb = new byte[3 * w * h];
        for (int i = 0; i < rgb.Length; i++) rgb[i] = (byte)(i * 5 + salt * 29 + i / (3 * w));
        return ImageCodec.Encode(new RgbImage(w, h, rgb), ImageFormat.Png).Bytes;
    }

    static BatchEntry[] Entries(GenerationPipeline p, IEnumerable<GenerationRequest> requests, CancellationToken ct = default, int previewEvery = 0) =>
        requests.Select(r => new BatchEntry(p.Prepare(r), ct, previewEvery)).ToArray();

    static byte[][] Alone(GenerationPipeline p, GenerationRequest r) => p.Generate(r).Images.Select(i => i.Image.Bytes).ToArray();

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void DiT_rows_are_bitwise_the_same_at_batch_1_and_batch_3(ScalarType dtype)
    {
        using var model = Flux2ModelFolder.Load(folders.Bfl, dtype);
        using var p = new GenerationPipeline(model);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var txt = cat(Abc.Select(r => p.EncodePrompt(r.Prompt)).ToList(), 0);                  // [3, Lt, D]
        var (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(txt);
        ctx = ctx.to(dtype);
        var x = cat(Enumerable.Range(0, 3).Select(i => p.Backend.Noise(10 + i, 4, 4)).ToList(), 0); // [3, 16, 128]
        var ids = Flux2Packing.BatchedPrcImg(zeros(3, 1, 4, 4)).Ids;                             // [3, 16, 4]
        var t = full(3, 0.7f, ScalarType.Float32);
        var three = model.Transformer.Forward(x, ids, t, ctx, ctxIds).to(ScalarType.Float32);
        for (int i = 0; i < 3; i++)
        {
            var r = i..(i + 1);
            var one = model.Transformer.Forward(x[r], ids[r], t[r], ctx[r], ctxIds[r]).to(ScalarType.Float32);
            float diff = (one - three[r]).abs().max().item<float>();
            output.WriteLine($"{dtype} row {i}: max |batch 1 - batch 3| = {diff:G3}");
            Assert.Equal(0f, diff);
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void A_batch_gives_each_entry_the_bytes_it_gets_alone(ScalarType dtype)
    {
        using var model = dtype == ScalarType.Float32 ? null : Flux2ModelFolder.Load(folders.Bfl, dtype);
        using var p = new GenerationPipeline(model ?? folders.BflModel);
        var entries = Entries(p, Abc);
        Assert.All(entries, e => Assert.Equal(entries[0].Request.Key, e.Request.Key));
        var sw = Stopwatch.StartNew();
        var outcomes = p.GenerateBatch(entries);
        double batchMs = sw.Elapsed.TotalMilliseconds;
        sw.Restart();
        var alone = Abc.Select(r => Alone(p, r)).ToList();
        double aloneMs = sw.Elapsed.TotalMilliseconds;
        for (int e = 0; e < Abc.Length; e++)
        {
            var result = Assert.IsType<GenerationResult>(outcomes[e].Result);
            Assert.Null(outcomes[e].Error);
            Assert.Equal(Abc[e].Count, result.Images.Count);
            Assert.Equal(Enumerable.Range(0, Abc[e].Count).Select(j => Abc[e].Seed!.Value + j), result.Images.Select(i => i.Seed));
            for (int j = 0; j < Abc[e].Count; j++) Assert.Equal(alone[e][j], result.Images[j].Image.Bytes);
            foreach (var stage in new[] { "reference_decode", "text_encode", "reference_encode", "decode[0]", "image_encode[0]" })
                Assert.Contains(result.Timings, t => t.ToString() == stage);
            Assert.Equal(3, result.Timings.Count(t => t.Stage == Stage.Denoise));
        }
        Assert.Equal(Alone(p, Abc[0] with { Seed = 101, Count = 1 })[0], outcomes[0].Result!.Images[1].Image.Bytes); // row 1 of A is seed 101 alone
        output.WriteLine($"{dtype}: batch [A n=2, B, C] (4 rows, 3 steps, 64x64) {batchMs:F0} ms; the three alone {aloneMs:F0} ms; A's timings: " +
            string.Join(", ", outcomes[0].Result!.Timings.Select(t => $"{t.Stage} {t.Milliseconds:F1}")));
    }

    [Fact]
    public void The_CFG_path_batches_too()
    {
        var m = folders.BflModel;   // the same modules under a non-distilled card: [uncond; cond] of all rows, guidance 4
        var card = m.Card with { Sampling = m.Card.Sampling with { Distilled = false, Guidance = 4.0 } };
        var cfg = new Flux2Model(m.Directory, m.Layout, card, m.Transformer, m.Vae, m.TextEncoder, m.Tokenizer, m.DType, m.LoadReport); // not disposed: the fixture owns the modules
        using var p = new GenerationPipeline(cfg);
        var entries = Entries(p, Abc);
        Assert.Equal(4.0, entries[0].Request.Key.Guidance);
        var outcomes = p.GenerateBatch(entries);
        for (int e = 0; e < Abc.Length; e++) Assert.Equal(Alone(p, Abc[e]), outcomes[e].Result!.Images.Select(i => i.Image.Bytes));
        using var distilled = new GenerationPipeline(m);
        Assert.NotEqual(Alone(distilled, Abc[1]), outcomes[1].Result!.Images.Select(i => i.Image.Bytes));
    }

    [Fact]
    public void A_cancelled_entry_leaves_the_batch_within_one_step_and_the_others_finish()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var requests = Abc.Select(r => r with { Steps = 4 }).ToArray();
        using var cts = new CancellationTokenSource();
        var entries = Entries(p, requests);
        entries[1] = entries[1] with { CancellationToken = cts.Token };
        var seen = new List<BatchProgress>();
        var outcomes = p.GenerateBatch(entries, s =>
        {
            seen.Add(s);
            if (s.Entry == 1 && s.Step == 1) cts.Cancel();
        });
        Assert.IsAssignableFrom<OperationCanceledException>(outcomes[1].Error);
        Assert.Null(outcomes[1].Result);
        Assert.Equal([0, 1], seen.Where(s => s.Entry == 1).Select(s => s.Step));        // stopped right after the step that cancelled it
        foreach (int e in new[] { 0, 2 })
        {
            Assert.Equal([0, 1, 2, 3], seen.Where(s => s.Entry == e).Select(s => s.Step));
            Assert.All(seen.Where(s => s.Entry == e), s => Assert.Equal(4, s.Steps));
            var alone = Alone(p, requests[e]);
            Assert.Equal(alone, outcomes[e].Result!.Images.Select(i => i.Image.Bytes));
        }

        // Cancelled before the batch starts: no step at all, the others unaffected.
        using var early = new CancellationTokenSource();
        early.Cancel();
        var none = new List<BatchProgress>();
        var again = p.GenerateBatch([entries[0], entries[2] with { CancellationToken = early.Token }], none.Add);
        Assert.IsAssignableFrom<OperationCanceledException>(again[1].Error);
        Assert.DoesNotContain(none, s => s.Entry == 1);
        Assert.Equal(outcomes[0].Result!.Images.Select(i => i.Image.Bytes), again[0].Result!.Images.Select(i => i.Image.Bytes));
    }

    [Fact]
    public void An_exception_in_the_batch_fails_every_running_entry()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        using var cts = new CancellationTokenSource();
        var entries = Entries(p, Abc);
        entries[2] = entries[2] with { CancellationToken = cts.Token };
        var boom = new InvalidOperationException("boom");
        var outcomes = p.GenerateBatch(entries, s =>
        {
            if (s.Step == 0 && s.Entry == 2) cts.Cancel();
            if (s.Step == 1) throw boom;
        });
        Assert.Same(boom, outcomes[0].Error);
        Assert.Same(boom, outcomes[1].Error);
        Assert.IsAssignableFrom<OperationCanceledException>(outcomes[2].Error);
        Assert.All(outcomes, o => Assert.Null(o.Result));
        // The pipeline is still usable and gives the same bytes.
        Assert.Equal(Alone(p, Abc[1]), p.GenerateBatch([entries[1]])[0].Result!.Images.Select(i => i.Image.Bytes));
    }

    [Fact]
    public void Entries_with_different_keys_are_refused()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var a = p.Prepare(Req("a", 1));
        foreach (var other in new[] { Req("b", 2, size: "128x64"), Req("b", 2, steps: 4), Req("b", 2, refs: [Png(64, 64, 1)]) })
        {
            var b = p.Prepare(other);
            Assert.NotEqual(a.Key, b.Key);
            var e = Assert.Throws<ArgumentException>(() => p.GenerateBatch([new BatchEntry(a, default), new BatchEntry(b, default)]));
            Assert.Contains("key", e.Message);
        }
        Assert.Empty(p.GenerateBatch([]));
    }

    [Fact]
    public void Prepare_resolves_everything_and_keys_reference_shapes()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var t2i = p.Prepare(Req("a", 5, n: 3, size: "128x64"));
        Assert.Equal(new BatchKey(128, 64, 3, null, ""), t2i.Key);
        Assert.Equal((128, 64, 3, 5L, 3), (t2i.Width, t2i.Height, t2i.Steps, t2i.Seed, t2i.Count));
        var edit = p.Prepare(Req("a", 5, size: "64x64", refs: [Png(96, 64, 1), Png(50, 70, 2)]));
        Assert.Equal("6x4,3x4", edit.Key.References);                                        // latent grids after the 16-pixel centre crop
        Assert.Equal(edit.Key, p.Prepare(Req("b", 6, size: "64x64", refs: [Png(100, 70, 3), Png(63, 79, 4)])).Key); // same token shapes, other pixels
        Assert.Contains("prompt", Assert.Throws<RequestException>(() => p.Prepare(Req(" ", 1))).Message);
        Assert.Contains("image 1", Assert.Throws<RequestException>(() => p.Prepare(Req("a", 1, refs: [[1, 2, 3]]))).Message);
        Assert.Contains("image 2: image 40x12 is smaller than 16", Assert.Throws<RequestException>(() => p.Prepare(Req("a", 1, refs: [Png(64, 64, 1), Png(40, 12, 2)]))).Message);
        Assert.NotEqual(p.Prepare(Req("a", 1) with { Seed = null }).Seed, p.Prepare(Req("a", 1) with { Seed = null }).Seed);
    }

    [Fact]
    public void Edits_with_reference_images_batch_too()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        GenerationRequest[] edits =
        [
            Req("make it red", 3, n: 2, refs: [Png(96, 64, 1)]),
            Req("make it blue", 9, refs: [Png(100, 70, 2)]),                                // other pixels, the same 6x4 token grid
        ];
        var entries = Entries(p, edits);
        Assert.Equal(entries[0].Request.Key, entries[1].Request.Key);
        var outcomes = p.GenerateBatch(entries);
        for (int e = 0; e < edits.Length; e++)
        {
            Assert.Equal(1, outcomes[e].Result!.References);
            Assert.Equal(Alone(p, edits[e]), outcomes[e].Result!.Images.Select(i => i.Image.Bytes));
        }
        Assert.NotEqual(outcomes[0].Result!.Images[0].Image.Bytes, p.Generate(edits[0] with { References = [] }).Images[0].Image.Bytes); // the reference matters
    }

    [Fact]
    public void Previews_are_small_decodable_jpegs_every_n_steps()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var codec = new ImageCodec();
        foreach (var (size, w, h) in new[] { ("64x64", 64, 64), ("512x256", 256, 128) })
        {
            var entries = Entries(p, [Req("a red bicycle", 1, steps: 4, size: size), Req("a cat", 2, steps: 4, size: size)]);
            entries[0] = entries[0] with { PreviewEvery = 2 };
            var seen = new List<BatchProgress>();
            var outcomes = p.GenerateBatch(entries, seen.Add);
            Assert.Equal([false, true, false, true], seen.Where(s => s.Entry == 0).Select(s => s.Preview is not null));
            Assert.All(seen.Where(s => s.Entry == 1), s => Assert.Null(s.Preview));
            foreach (var s in seen.Where(s => s.Preview is not null))
            {
                Assert.Equal(ImageFormat.Jpeg, s.Preview!.Format);
                var img = codec.Decode(s.Preview.Bytes);
                Assert.Equal((w, h), (img.Width, img.Height));
            }
            Assert.Equal(2, outcomes[0].Result!.Timings.Count(t => t.Stage == Stage.Preview));
            // Previews do not change the result.
            Assert.Equal(Alone(p, entries[0].Request.Request), outcomes[0].Result!.Images.Select(i => i.Image.Bytes));
        }
    }
}
