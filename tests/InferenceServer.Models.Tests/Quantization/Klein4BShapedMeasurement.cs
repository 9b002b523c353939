using System.Diagnostics;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Quantization;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Quantization;

/// <summary>
/// 8-bit weights at klein-4B width (hidden 3072, 24 heads, context 7680) on a 1 double + 1 single block stack (the full
/// model is 8 GB): DiT output cosine and per-forward time against BF16 at 256 image + 512 text tokens, decoded-image PSNR
/// after 4 steps through the full-size VAE (random weights as the random model folders have them), resident weight memory of the stack and,
/// from the parameter list, of the whole klein-4B transformer. About 3 minutes and 5 GB on 2 cores, so it runs only with
/// INFERENCE_MEASURE=1 (then it asserts the same thresholds as the tiny-model tests):
/// <c>INFERENCE_MEASURE=1 dotnet test tests/InferenceServer.Models.Tests --filter Klein4BShapedMeasurement --logger "console;verbosity=detailed"</c>
/// </summary>
[Collection(InferenceServer.Tests.Shared.RunAlone.Name)]
public class Klein4BShapedMeasurement(ITestOutputHelper helper)
{
    /// <summary>Lines go to the test output and, while it runs, to INFERENCE_MEASURE_LOG when set (progress of a long run).</summary>
    readonly Output output = new(helper);

    sealed class Output(ITestOutputHelper helper)
    {
        public void WriteLine(string line)
        {
            helper.WriteLine(line);
            if (Environment.GetEnvironmentVariable("INFERENCE_MEASURE_LOG") is { Length: > 0 } log) File.AppendAllText(log, line + "\n");
        }
    }

    [Fact]
    public void Klein_4b_width_stack_quality_speed_and_memory()
    {
        if (Environment.GetEnvironmentVariable("INFERENCE_MEASURE") != "1") { output.WriteLine("set INFERENCE_MEASURE=1 to run"); return; }
        var full = ModelCards.Load("flux2-klein-4b").Transformer;
        var cfg = full with { Depth = 1, DepthSingleBlocks = 1 };

        foreach (var q in new[] { WeightQuantization.Fp8, WeightQuantization.Int8 })
            output.WriteLine($"klein-4B transformer weights, {q}: {Flux2WeightBytes(full, q) / 1e9:F3} GB vs {Flux2WeightBytes(full, WeightQuantization.None) / 1e9:F3} GB bf16 = {(double)Flux2WeightBytes(full, q) / Flux2WeightBytes(full, WeightQuantization.None):F4}x");

        using var scope = NewDisposeScope();
        using var gen = new Generator(7);
        var x = randn([1, 256, cfg.InChannels], generator: gen);
        var xIds = LatentTokens.Ids(1, 16, 16);
        var ctx = randn([1, 512, cfg.ContextInDim], generator: gen);
        var ctxIds = stack([zeros(512, ScalarType.Int64), zeros(512, ScalarType.Int64), zeros(512, ScalarType.Int64), arange(512, ScalarType.Int64)], 1).unsqueeze(0);
        using var vae = RandomVae(Flux2ModelFolder.VaeConfig(ModelCards.Load("flux2-klein-4b")));

        var sw = Stopwatch.StartNew();
        using var bf16 = new Flux2Transformer(cfg, dtype: ScalarType.BFloat16).InitRandom(1);
        output.WriteLine($"stack: {Flux2WeightBytes(cfg, WeightQuantization.None) / 1e9:F3} GB bf16, built in {sw.Elapsed.TotalSeconds:F1} s");
        var refOut = new Dictionary<float, Tensor>();
        foreach (var t in new[] { 1f, 0.5f }) refOut[t] = bf16.Forward(x, xIds, tensor(new[] { t }), ctx, ctxIds).to(ScalarType.Float32);
        double bfMs = Time(() => bf16.Forward(x, xIds, tensor(new[] { 0.5f }), ctx, ctxIds).Dispose());
        var refImage = Generate(bf16, vae, x, xIds, ctx, ctxIds);
        long bfBytes = WeightQuantizer.WeightBytes(bf16);
        output.WriteLine($"bf16: {bfMs:F0} ms per DiT forward (256 image + 512 text tokens)");

        foreach (var q in new[] { WeightQuantization.Fp8, WeightQuantization.Int8 })
        {
            sw.Restart();
            using var m = new Flux2Transformer(cfg, dtype: ScalarType.BFloat16).InitRandom(1);
            WeightQuantizer.QuantizeInPlace(m, WeightQuantizer.FormatOf(q), Flux2Quantize.Select(q));
            output.WriteLine($"{q}: {m.WeightFormat}; quantized in {sw.Elapsed.TotalSeconds:F1} s");
            foreach (var t in new[] { 1f, 0.5f })
            {
                using var o = m.Forward(x, xIds, tensor(new[] { t }), ctx, ctxIds).to(ScalarType.Float32);
                double cos = Cosine(o, refOut[t]);
                output.WriteLine($"  t={t}: DiT output cosine {cos:F6}");
                Assert.True(cos >= 0.999, $"{q} t={t}: cosine {cos}");
            }
            double ms = Time(() => m.Forward(x, xIds, tensor(new[] { 0.5f }), ctx, ctxIds).Dispose());
            double psnr = Psnr(Generate(m, vae, x, xIds, ctx, ctxIds), refImage);
            double ratio = (double)WeightQuantizer.WeightBytes(m) / bfBytes;
            output.WriteLine($"  {ms:F0} ms per DiT forward ({ms / bfMs:F2}x bf16); decoded 256x256 PSNR {psnr:F2} dB; stack weights {ratio:F4}x bf16");
            Assert.True(psnr >= 35, $"{q}: PSNR {psnr}");
            Assert.True(ratio <= 0.55, $"{q}: {ratio}x");
        }
    }

    /// <summary>The full-size VAE with the random folders' values (convs N(0, 1/fan_in), norms 1, biases 0, BN mean 0 / var 1).</summary>
    static Flux2Autoencoder RandomVae(AutoEncoderConfig config)
    {
        var vae = new Flux2Autoencoder(config);
        using var noGrad = no_grad();
        foreach (var (name, t) in vae.state_dict())
        {
            var spec = new InferenceServer.Models.Weights.TensorSpec(name, t.dtype == ScalarType.Int64 ? InferenceServer.Models.Weights.SafetensorsDType.I64 : InferenceServer.Models.Weights.SafetensorsDType.F32, t.shape);
            using var v = Flux2RandomModel.VaeTensor(spec, 9);
            t.copy_(v);
        }
        return vae;
    }

    /// <summary>Resident transformer weight bytes under a quantization (as Flux2Quantize.Select picks the linears).</summary>
    static long Flux2WeightBytes(Flux2Config c, WeightQuantization q)
    {
        var select = Flux2Quantize.Select(q);
        long total = 0;
        foreach (var p in Flux2Specs.Parameters(c))
        {
            bool linear = p.Name.EndsWith(".weight", StringComparison.Ordinal) && p.Shape.Length == 2;
            if (q == WeightQuantization.None || !linear || !select(p.Name[..^".weight".Length])) total += 2 * p.ElementCount;
            else total += p.ElementCount + 4 * (q == WeightQuantization.Int8 ? p.Shape[0] : 1);
        }
        return total;
    }

    static double Time(Action a)
    {
        a(); // warm-up
        var sw = Stopwatch.StartNew();
        a();
        return sw.Elapsed.TotalMilliseconds;
    }

    static Tensor Generate(Flux2Transformer m, Flux2Autoencoder vae, Tensor x0, Tensor xIds, Tensor ctx, Tensor ctxIds)
    {
        using var scope = NewDisposeScope();
        var x = x0.clone();
        double[] t = [1.0, 0.75, 0.5, 0.25, 0.0];
        for (int i = 0; i < 4; i++)
            x = x + (t[i + 1] - t[i]) * m.Forward(x, xIds, tensor(new[] { (float)t[i] }), ctx, ctxIds).to(ScalarType.Float32);
        var image = vae.Decode(LatentTokens.FromSequence(x, xIds));
        return ((image.clamp(-1, 1) + 1) / 2).MoveToOuterDisposeScope();
    }

    static double Cosine(Tensor a, Tensor b)
    {
        using var s = NewDisposeScope();
        var x = a.to(ScalarType.Float64).flatten();
        var y = b.to(ScalarType.Float64).flatten();
        return ((x * y).sum() / (x.norm() * y.norm())).item<double>();
    }

    static double Psnr(Tensor a, Tensor b)
    {
        double mse = (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).square().mean().item<double>();
        return 10 * Math.Log10(1 / Math.Max(mse, 1e-20));
    }
}
