using System.Text;
using System.Text.Json;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Weights;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Quantization;

/// <summary>A random tiny model folder (BFL layout, bf16), written once for the class.</summary>
public sealed class TinyModelFolder : IDisposable
{
    public string Dir { get; } = Directory.CreateTempSubdirectory("quant-tiny-").FullName;
    public TinyModelFolder() => Flux2RandomModel.Write(ModelCards.Load("flux2-tiny"), Flux2Layout.Bfl, Dir, ScalarType.BFloat16, seed: 11);
    public void Dispose() { try { Directory.Delete(Dir, recursive: true); } catch (IOException) { } }
}

/// <summary>
/// 8-bit transformer weights on the tiny model against BF16 at the same inputs: DiT output cosine >= 0.999, decoded image
/// PSNR >= 35 dB after a 4-step sampling, resident weight memory <= 0.55x; and the official FP8 layout loading as FP8.
/// </summary>
public class Flux2QuantizationTests(TinyModelFolder folder, ITestOutputHelper output) : IClassFixture<TinyModelFolder>
{
    public static TheoryData<string> Modes => new() { "fp8", "int8" };

    /// <summary>Fixed DiT inputs: 8x8 image tokens, 16 text tokens.</summary>
    static (Tensor X, Tensor XIds, Tensor Ctx, Tensor CtxIds) Inputs(Flux2Config c, long seed)
    {
        using var gen = new Generator((ulong)seed);
        var x = randn([1, 64, c.InChannels], generator: gen);
        var xIds = LatentTokens.Ids(1, 8, 8);
        var ctx = randn([1, 16, c.ContextInDim], generator: gen);
        var ctxIds = stack([zeros(16, ScalarType.Int64), zeros(16, ScalarType.Int64), zeros(16, ScalarType.Int64), arange(16, ScalarType.Int64)], 1).unsqueeze(0);
        return (x, xIds, ctx, ctxIds);
    }

    static double Cosine(Tensor a, Tensor b)
    {
        using var s = NewDisposeScope();
        var x = a.to(ScalarType.Float64).flatten();
        var y = b.to(ScalarType.Float64).flatten();
        return ((x * y).sum() / (x.norm() * y.norm())).item<double>();
    }

    /// <summary>4 Euler steps of the flow from t = 1 to 0 (linear schedule), then the VAE: image [1, 3, H, W] in [0, 1].</summary>
    static Tensor Generate(Flux2Model m, long seed)
    {
        using var scope = NewDisposeScope();
        var (x, xIds, ctx, ctxIds) = Inputs(m.Transformer.Config, seed);
        double[] t = [1.0, 0.75, 0.5, 0.25, 0.0];
        for (int i = 0; i < 4; i++)
        {
            var v = m.Transformer.Forward(x, xIds, tensor(new[] { (float)t[i] }), ctx, ctxIds).to(ScalarType.Float32);
            x = x + (t[i + 1] - t[i]) * v;
        }
        var grid = LatentTokens.FromSequence(x, xIds);                           // [1, 128, 8, 8]
        var image = m.Vae.Decode(grid.to(m.Vae.ComputeType));                    // [1, 3, H, W] f32
        return ((image.clamp(-1, 1) + 1) / 2).MoveToOuterDisposeScope();
    }

    static double Psnr(Tensor a, Tensor b)
    {
        double mse = (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).square().mean().item<double>();
        return 10 * Math.Log10(1 / Math.Max(mse, 1e-20));
    }

    [Theory, MemberData(nameof(Modes))]
    public void Quantized_tiny_model_matches_bf16_output_image_and_halves_weight_memory(string mode)
    {
        using var scope = NewDisposeScope();
        using var bf16 = Flux2ModelFolder.Load(folder.Dir, ScalarType.BFloat16);
        using var q = Flux2ModelFolder.Load(folder.Dir, new ModelLoadOptions(ScalarType.BFloat16, WeightQuantizer.Parse(mode)));
        output.WriteLine($"{mode}: {q.WeightFormat}");
        Assert.Equal("bf16", bf16.WeightFormat);
        Assert.Contains(mode == "fp8" ? "fp8 weights (e4m3, per-tensor scale), dequantized per layer to bf16 (cpu)" : "int8 weight-only (per-output-channel scale), dequantized per layer to bf16", q.WeightFormat); // "into a reused buffer (cpu)" unless switched off
        Assert.Contains(mode == "fp8" ? "27 of 29 linears" : "all linears", q.WeightFormat); // fp8 keeps img_in and final_layer.linear
        Assert.Contains(q.LoadReport, l => l.Contains(q.WeightFormat, StringComparison.Ordinal));

        // DiT output at the same inputs, three timesteps.
        var (x, xIds, ctx, ctxIds) = Inputs(bf16.Transformer.Config, 3);
        foreach (var t in new[] { 1.0f, 0.6f, 0.2f })
        {
            var a = bf16.Transformer.Forward(x, xIds, tensor(new[] { t }), ctx, ctxIds);
            var b = q.Transformer.Forward(x, xIds, tensor(new[] { t }), ctx, ctxIds);
            double cos = Cosine(a, b);
            output.WriteLine($"t={t}: DiT output cosine {cos:F6}");
            Assert.True(cos >= 0.999, $"{mode} t={t}: cosine {cos:F6} < 0.999");
        }

        // Decoded image after 4 steps from the same noise.
        double psnr = Psnr(Generate(bf16, 5), Generate(q, 5));
        output.WriteLine($"decoded image PSNR vs bf16: {psnr:F2} dB");
        Assert.True(psnr >= 35, $"{mode}: PSNR {psnr:F2} dB < 35");

        // Resident weight memory of the transformer.
        long full = WeightQuantizer.WeightBytes(bf16.Transformer), small = WeightQuantizer.WeightBytes(q.Transformer);
        double ratio = (double)small / full;
        output.WriteLine($"transformer weights: {small:N0} bytes vs {full:N0} bf16 = {ratio:F3}x");
        Assert.True(ratio <= 0.55, $"{mode}: {ratio:F3}x of bf16");
    }

    [Fact]
    public void Official_fp8_layout_loads_as_fp8_whatever_is_asked()
    {
        // The official scaled-FP8 file: F8_E4M3 weights, F32 scalar weight_scale, plus input_scale and comfy_quant per layer
        // and _quantization_metadata in the header; one layer with the older spelling scale_weight / scale_input.
        string dir = Directory.CreateTempSubdirectory("quant-official-").FullName;
        try
        {
            string tFile = Directory.GetFiles(folder.Dir, "flux-2-*.safetensors").Single();
            foreach (var f in Directory.EnumerateFiles(folder.Dir, "*", SearchOption.AllDirectories))
            {
                string rel = Path.GetRelativePath(folder.Dir, f);
                if (f == tFile) continue;
                Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(dir, rel))!);
                File.Copy(f, Path.Combine(dir, rel));
            }
            string ours = Path.Combine(dir, "ours.safetensors.tmp");
            using (var src = Checkpoint.Open(tFile)) Flux2Quantize.WriteTransformer(src, ours, WeightQuantization.Fp8);
            var tensors = new List<(string, Tensor)>();
            using (var q = SafetensorsFile.Open(ours))
            {
                Assert.Contains(Flux2Quantize.MetadataKey, q.Metadata.Keys);
                foreach (var e in q.Entries)
                {
                    var t = e.DType == SafetensorsDType.F8_E4M3 ? q.LoadRaw(e.Name).view(e.Shape) : q.Load(e.Name);
                    string name = e.Name;
                    if (name.StartsWith("img_in.", StringComparison.Ordinal)) name = name.Replace("weight_scale", "scale_weight"); // older spelling
                    tensors.Add((name, t));
                    if (e.DType == SafetensorsDType.F8_E4M3)
                    {
                        string layer = e.Name[..^".weight".Length];
                        tensors.Add((layer + (layer == "img_in" ? ".scale_input" : ".input_scale"), tensor(0.05f)));
                        tensors.Add((layer + ".comfy_quant", tensor(Encoding.UTF8.GetBytes("{\"format\": \"float8_e4m3fn\"}"))));
                    }
                }
            }
            File.Delete(ours);
            // The writer would encode float tensors for F8 specs, so write the codes as U8 and patch the header dtype.
            string official = Path.Combine(dir, "flux-2-tiny-fp8.safetensors");
            WriteWithFp8Dtype(official, tensors);
            foreach (var (_, t) in tensors) t.Dispose();

            using var m = Flux2ModelFolder.Load(dir, new ModelLoadOptions(ScalarType.BFloat16, WeightQuantization.Int8)); // asks int8: gets the file's fp8
            output.WriteLine(m.WeightFormat);
            Assert.Equal("flux2-tiny", m.Card.Name);
            Assert.StartsWith("fp8 weights (e4m3, per-tensor scale)", m.WeightFormat);
            Assert.Contains("27 of 29 linears", m.WeightFormat);
            using var plain = Flux2ModelFolder.Load(dir);
            Assert.StartsWith("fp8 weights", plain.WeightFormat);

            // Same numbers as quantizing the bf16 folder at load time.
            using var loadTime = Flux2ModelFolder.Load(folder.Dir, new ModelLoadOptions(ScalarType.BFloat16, WeightQuantization.Fp8));
            using var scope = NewDisposeScope();
            var (x, xIds, ctx, ctxIds) = Inputs(m.Transformer.Config, 4);
            var a = m.Transformer.Forward(x, xIds, tensor(new[] { 0.5f }), ctx, ctxIds);
            var b = loadTime.Transformer.Forward(x, xIds, tensor(new[] { 0.5f }), ctx, ctxIds);
            Assert.True(a.eq(b).all().item<bool>());
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>Writes tensors as they are, every 2-D uint8 weight declared F8_E4M3 (its bytes are the codes).</summary>
    static void WriteWithFp8Dtype(string path, List<(string Name, Tensor T)> tensors)
    {
        var meta = new Dictionary<string, string>
        {
            [Flux2Quantize.MetadataKey] = JsonSerializer.Serialize(new { format_version = "1.0", layers = new Dictionary<string, object>() }),
        };
        var specs = tensors.Select(t => t.T.dtype == ScalarType.Byte && t.T.dim() == 2
            ? new TensorSpec(t.Name, SafetensorsDType.F8_E4M3, t.T.shape) : TensorSpec.Of(t.Name, t.T)).ToList();
        var header = SafetensorsWriter.Header(specs, meta);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((ulong)header.Length));
        fs.Write(header);
        foreach (var (_, t) in tensors)
        {
            using var c = t.contiguous();
            fs.Write(c.bytes);
        }
    }
}
