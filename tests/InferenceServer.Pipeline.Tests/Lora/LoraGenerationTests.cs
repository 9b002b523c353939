using InferenceServer.Models;
using InferenceServer.Models.Lora;
using InferenceServer.Models.Quantization;
using InferenceServer.Pipeline.Generation;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Lora;

/// <summary>Per-request adapters through <see cref="GenerationPipeline"/> on the tiny models of both families.</summary>
public class LoraGenerationTests(LoraModels models, ITestOutputHelper output) : IClassFixture<LoraModels>
{
    public static TheoryData<string, ScalarType> FamiliesAndDTypes => new()
    {
        { "flux2", ScalarType.Float32 }, { "flux2", ScalarType.BFloat16 }, { "zimage", ScalarType.Float32 }, { "zimage", ScalarType.BFloat16 },
    };

    GenerationPipeline Pipeline(string family, ScalarType dtype, WeightQuantization q = WeightQuantization.None) =>
        new(ModelFamilies.Load(models.Folder(family), new ModelLoadOptions(dtype, q)));

    static GenerationRequest Req(string prompt, long seed, params LoraUse[] loras) =>
        new() { Prompt = prompt, Seed = seed, Steps = 2, Size = new SizeRequest("64x64"), Loras = loras };

    static byte[] Bytes(GenerationPipeline p, GenerationRequest r) => p.Generate(r).Images[0].Image.Bytes;

    [Theory, MemberData(nameof(FamiliesAndDTypes))]
    public void A_batch_of_mixed_adapters_gives_each_request_the_image_it_gets_alone(string family, ScalarType dtype)
    {
        using var p = Pipeline(family, dtype);
        using var a = p.LoadAdapter(models.Adapter(family, "A"));
        using var b = p.LoadAdapter(models.Adapter(family, "B"));
        GenerationRequest[] requests =
        [
            Req("a red bicycle", 1, new LoraUse(a, 0.8)),
            Req("a cat on a sofa", 2, new LoraUse(b, 1.0)),
            Req("a blue house", 3),
            Req("a lighthouse", 4, new LoraUse(b, 0.5), new LoraUse(a, 1.2)),
        ];
        var outcomes = p.GenerateBatch(requests.Select(r => new BatchEntry(p.Prepare(r), default)).ToArray());
        for (int i = 0; i < requests.Length; i++)
        {
            var batched = Assert.IsType<GenerationResult>(outcomes[i].Result).Images[0].Image.Bytes;
            Assert.Equal(Bytes(p, requests[i]), batched);
        }
        // The adapters do something: each adapted request differs from the same request without adapters.
        foreach (int i in new[] { 0, 1, 3 })
            Assert.NotEqual(Bytes(p, requests[i] with { Loras = [] }), Bytes(p, requests[i]));
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void CFG_rows_run_the_adapters_of_their_request(ScalarType dtype)
    {
        // Z-Image with guidance > 1 runs [positive; negative] as one 2R-row batch: row b belongs to request b mod R.
        using var p = Pipeline("zimage", dtype);
        using var a = p.LoadAdapter(models.Adapter("zimage", "A"));
        GenerationRequest[] requests =
        [
            Req("a red bicycle", 1, new LoraUse(a, 0.7)) with { Guidance = 3 },
            Req("a cat", 2) with { Guidance = 3 },
        ];
        var outcomes = p.GenerateBatch(requests.Select(r => new BatchEntry(p.Prepare(r), default)).ToArray());
        for (int i = 0; i < requests.Length; i++)
            Assert.Equal(Bytes(p, requests[i]), Assert.IsType<GenerationResult>(outcomes[i].Result).Images[0].Image.Bytes);
        Assert.NotEqual(Bytes(p, requests[0] with { Loras = [] }), Bytes(p, requests[0]));
    }

    [Theory, MemberData(nameof(FamiliesAndDTypes))]
    public void Scale_zero_is_the_base_model_bit_for_bit(string family, ScalarType dtype)
    {
        using var p = Pipeline(family, dtype);
        using var a = p.LoadAdapter(models.Adapter(family, "A"));
        Assert.Equal(Bytes(p, Req("a tree", 9)), Bytes(p, Req("a tree", 9, new LoraUse(a, 0))));
    }

    [Theory, MemberData(nameof(FamiliesAndDTypes))]
    public void Per_row_deltas_equal_merged_weights(string family, ScalarType dtype)
    {
        using var unmerged = Pipeline(family, dtype);
        using var merged = Pipeline(family, dtype);
        using var a = unmerged.LoadAdapter(models.Adapter(family, "A"));
        using (var forMerge = merged.LoadAdapter(models.Adapter(family, "A"))) merged.Backend.Lora.Merge(forMerge, 0.8);
        var x = Latents(unmerged, Req("a bridge", 21, new LoraUse(a, 0.8)));
        var y = Latents(merged, Req("a bridge", 21));
        var baseline = Latents(unmerged, Req("a bridge", 21));
        double diff = (x - y).abs().max().item<float>(), effect = (x - baseline).abs().max().item<float>();
        output.WriteLine($"{family} {dtype}: max |per-row - merged| {diff:G3}, adapter effect {effect:G3}");
        // float32: the same sums in another order; bf16: the merged weight is rounded to bf16 once (8-bit mantissa).
        Assert.True(diff < (dtype == ScalarType.Float32 ? 1e-4 : 0.1 * effect), $"per-row vs merged: {diff:G3} (effect {effect:G3})");
        Assert.True(effect > 1e-2, $"the adapter must change the latents (effect {effect:G3})");
    }

    static Tensor Latents(GenerationPipeline p, GenerationRequest r)
    {
        Tensor? last = null;
        p.Generate(r, s => { last?.Dispose(); last = s.Latents.to(ScalarType.Float32).clone().DetachFromDisposeScope(); });
        return last!;
    }

    [Theory]
    [InlineData("flux2")]
    [InlineData("zimage")]
    public void Every_file_format_of_one_adapter_gives_identical_output(string family)
    {
        using var p = Pipeline(family, ScalarType.BFloat16);
        var adapters = Enum.GetValues<LoraFileFormat>().Select(f => p.LoadAdapter(models.Adapter(family, "A", f), "A")).ToList();
        try
        {
            foreach (var ad in adapters) output.WriteLine(ad.ToString());
            Assert.Equal(["bfl", "diffusers", "kohya"], adapters.Select(x => x.Format).Order());
            foreach (var ad in adapters.Skip(1))
            {
                Assert.Equal(adapters[0].Deltas.Keys.Order(), ad.Deltas.Keys.Order());
                foreach (var (path, d) in adapters[0].Deltas)
                {
                    Assert.True(d.Down.eq(ad.Deltas[path].Down).all().item<bool>(), $"{ad.Format} {path}: Down differs");
                    Assert.True(d.Up.eq(ad.Deltas[path].Up).all().item<bool>(), $"{ad.Format} {path}: Up differs");
                }
            }
            var images = adapters.Select(ad => Bytes(p, Req("a fox", 5, new LoraUse(ad, 0.9)))).ToList();
            Assert.All(images, img => Assert.Equal(images[0], img));
        }
        finally { foreach (var ad in adapters) ad.Dispose(); }
    }

    [Theory]
    [InlineData("flux2", WeightQuantization.Int8)]
    [InlineData("flux2", WeightQuantization.Fp8)]
    [InlineData("zimage", WeightQuantization.Int8)]
    [InlineData("zimage", WeightQuantization.Fp8)]
    public void Adapters_run_on_8_bit_base_weights(string family, WeightQuantization q)
    {
        using var p = Pipeline(family, ScalarType.BFloat16, q);
        Assert.Contains(q == WeightQuantization.Int8 ? "int8" : "fp8", p.Backend.WeightFormat);
        using var a = p.LoadAdapter(models.Adapter(family, "A"));
        using var b = p.LoadAdapter(models.Adapter(family, "B"));
        Assert.Equal(ScalarType.BFloat16, a.Deltas.Values.First().Up.dtype); // the delta stays bf16 on 8-bit weights
        // A at two scales in one batch: with one batched GEMM for A's rows this broke bitwise equality (flux2 fp8).
        GenerationRequest[] requests = [Req("a boat", 1, new LoraUse(a, 1)), Req("a boat", 1), Req("a kite", 2, new LoraUse(b, 1), new LoraUse(a, 0.5))];
        var outcomes = p.GenerateBatch(requests.Select(r => new BatchEntry(p.Prepare(r), default)).ToArray());
        for (int i = 0; i < requests.Length; i++)
            Assert.Equal(Bytes(p, requests[i]), Assert.IsType<GenerationResult>(outcomes[i].Result).Images[0].Image.Bytes);
        Assert.NotEqual(Bytes(p, requests[0]), Bytes(p, requests[1]));
    }

    [Fact]
    public void Requests_with_bad_adapter_lists_are_refused_naming_the_field()
    {
        using var p = Pipeline("flux2", ScalarType.Float32);
        using var z = Pipeline("zimage", ScalarType.Float32);
        using var a = p.LoadAdapter(models.Adapter("flux2", "A"));
        using var za = z.LoadAdapter(models.Adapter("zimage", "A"));
        void Refused(GenerationRequest r, string fragment)
        {
            var e = Assert.Throws<RequestException>(() => p.Prepare(r));
            Assert.Equal("loras", e.Field);
            Assert.Contains(fragment, e.Message);
        }
        Refused(Req("x", 1, Enumerable.Range(0, 5).Select(i => new LoraUse(a, 0.1 * i)).ToArray()), "at most 4");
        Refused(Req("x", 1, new LoraUse(a, double.NaN)), "loras[0].scale");
        Refused(Req("x", 1, new LoraUse(a, 100)), "loras[0].scale");
        Refused(Req("x", 1, new LoraUse(a, 1), new LoraUse(a, 0.5)), "named twice");
        Refused(Req("x", 1, new LoraUse(za, 1)), "another model");
    }
}
