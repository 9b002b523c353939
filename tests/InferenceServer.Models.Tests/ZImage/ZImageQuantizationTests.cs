using InferenceServer.Models.Quantization;
using InferenceServer.Models.ZImage;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.ZImage;

/// <summary>
/// 8-bit weights on the Z-Image transformer through the same quantizer as FLUX.2: every block linear (attention q/k/v/out,
/// including to_out.0 inside its ModuleList, and the SwiGLU projections) becomes a <see cref="QuantizedLinear"/>, the rest
/// stays as loaded, and the forward stays close to the BF16 one on each <c>zimage-dit-*</c> case.
/// </summary>
public class ZImageQuantizationTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => Fixtures.Cases("zimage-dit-");

    [Theory, MemberData(nameof(Cases))]
    public void Int8_and_fp8_cover_every_block_linear_and_stay_close_to_bf16(string caseName)
    {
        using var c = new ZImageCase(caseName);
        using var scope = NewDisposeScope();
        var latents = c.T("latents");
        long gh = latents.shape[2] / 2, gw = latents.shape[3] / 2;
        var x = ZImagePatches.Patchify(latents).to(ScalarType.BFloat16);
        var captions = c.Captions().Select(t => t.to(ScalarType.BFloat16)).ToList();
        using var reference = c.LoadModel(ScalarType.BFloat16);
        var expected = reference.Forward(x, gh, gw, c.T("t"), captions).to(ScalarType.Float32);
        var cfg = reference.Config;
        int blockLinears = (cfg.NLayers + 2 * cfg.NRefinerLayers) * 7;                         // q, k, v, out, w1, w2, w3

        foreach (var mode in new[] { "int8", "fp8" })
        {
            using var model = c.LoadModel(ScalarType.BFloat16);
            var swapped = WeightQuantizer.QuantizeInPlace(model, WeightQuantizer.FormatOf(WeightQuantizer.Parse(mode)), ZImageCheckpoint.QuantizesLayer);
            Assert.Equal(blockLinears, swapped.Count);
            Assert.Contains(swapped, p => p.EndsWith(".attention.to_out.0", StringComparison.Ordinal));
            Assert.Equal(blockLinears, WeightQuantizer.QuantizedLayers(model).Count());
            var actual = model.Forward(x, gh, gw, c.T("t"), captions).to(ScalarType.Float32);
            double cosine = (actual.flatten() * expected.flatten()).sum().item<float>() / (actual.norm().item<float>() * expected.norm().item<float>());
            output.WriteLine($"{caseName} {mode}: {swapped.Count} linears, cosine to bf16 {cosine:F5}, max |diff| {TensorAssert.MaxAbsDiff(actual, expected):G3}");
            Assert.True(cosine >= (mode == "int8" ? 0.999 : 0.99), $"{mode}: cosine {cosine}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_folder_loaded_with_int8_quantizes_while_reading_in_either_layout(bool singleFile)
    {
        string dir = Directory.CreateTempSubdirectory("zimage-int8-").FullName;
        try
        {
            ZImageRandomModel.Write(ZImageModelCard.Load("zimage-tiny"), dir, ScalarType.BFloat16, seed: 2, singleFile);
            using var plain = ZImageModelFolder.Load(dir, new Models.ModelLoadOptions(ScalarType.BFloat16));
            using var int8 = ZImageModelFolder.Load(dir, new Models.ModelLoadOptions(ScalarType.BFloat16, WeightQuantization.Int8));
            var cfg = int8.Transformer.Config;
            Assert.Equal((cfg.NLayers + 2 * cfg.NRefinerLayers) * 7, WeightQuantizer.QuantizedLayers(int8.Transformer).Count());
            Assert.Empty(WeightQuantizer.QuantizedLayers(plain.Transformer));
            using var scope = NewDisposeScope();
            using var gen = new Generator(7);
            var x = randn([1, 16, cfg.PatchDim], generator: gen).to(ScalarType.BFloat16);
            var caption = randn([20, cfg.CapFeatDim], generator: gen).to(ScalarType.BFloat16);
            var t = tensor(new[] { 0.4f });
            var a = plain.Transformer.Forward(x, 4, 4, t, [caption]).to(ScalarType.Float32).flatten();
            var b = int8.Transformer.Forward(x, 4, 4, t, [caption]).to(ScalarType.Float32).flatten();
            double cosine = (a * b).sum().item<float>() / (a.norm().item<float>() * b.norm().item<float>());
            output.WriteLine($"{(singleFile ? "single-file" : "diffusers")} int8 vs bf16 load: cosine {cosine:F5}");
            Assert.True(cosine >= 0.999, $"cosine {cosine}");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
