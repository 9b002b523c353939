using BenchmarkDotNet.Attributes;
using InferenceServer.Models.Qwen3;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks.Text;

/// <summary>
/// One Qwen3-4B decoder layer (shape from models/text-encoders/qwen3-4b.json: hidden 2560, 32 heads / 8 kv heads
/// x 128, MLP 9728) over one 512-token prompt (100 real tokens, the rest padding), random weights, FP32 and BF16.
/// klein runs 27 such layers per prompt. Run: --filter '*Qwen3EncoderLayer*'
/// </summary>
public class Qwen3EncoderLayerBenchmarks
{
    [Params(ScalarType.Float32, ScalarType.BFloat16)]
    public ScalarType DType { get; set; }

    Qwen3DecoderLayer layer = null!;
    Tensor x = null!, cos = null!, sin = null!, allowed = null!;

    [GlobalSetup]
    public void Setup()
    {
        var config = Qwen3Config.Load(Path.Combine(AppContext.BaseDirectory, "models", "text-encoders", "qwen3-4b.json"));
        int length = config.MaxLength;
        layer = new Qwen3DecoderLayer(config, DType, null);
        using (no_grad())
        {
            manual_seed(0);
            foreach (var (name, p) in layer.named_parameters())
                if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.fill_(1); else p.normal_(0, 0.02);
        }
        x = randn(1, length, config.HiddenSize).to(DType);                                           // [1, L, C]
        (cos, sin) = Qwen3Rope.Tables(length, config.HeadDim, config.RopeTheta, DType, null);          // [L, D]
        var valid = arange(length).lt(100).view(1, 1, 1, length);
        allowed = ones(length, length, dtype: ScalarType.Bool).tril().view(1, 1, length, length).logical_and(valid); // [1, 1, L, L]
    }

    [Benchmark]
    public double Layer_512_tokens()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return layer.forward(x, cos, sin, allowed).sum().to(ScalarType.Float32).item<float>();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var t in new[] { x, cos, sin, allowed }) t.Dispose();
        layer.Dispose();
    }
}
