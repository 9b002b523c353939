using BenchmarkDotNet.Attributes;
using InferenceServer.Models.Flux2;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Benchmarks.Blocks;

/// <summary>
/// Scaled dot-product attention at the klein shape: [1, 24 heads, L, 128], L = 768 (256 image + 512 text tokens, a
/// 256x256 image) and 4608 (4096 + 512, a 1024x1024 image). <c>Sdpa</c> is the bare
/// <c>functional.scaled_dot_product_attention</c> (libtorch picks flash attention on CUDA for BF16 and FP16);
/// <c>WithRope</c> is <see cref="Flux2Math.Attention"/> as the blocks call it (RoPE on q and k in float32, SDPA, heads merged).
/// Device: BENCH_DEVICE; dtypes: FLUX2_BENCH_DTYPES (see <see cref="BenchDevice"/>).
/// Run: dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*Attention*'
/// </summary>
public class AttentionBenchmarks
{
    [ParamsSource(nameof(DTypes))]
    public ScalarType DType { get; set; }

    [Params(768, 4608)]
    public int Sequence { get; set; }

    public static IEnumerable<ScalarType> DTypes() => BenchDevice.DTypes();

    Tensor? q, k, v, pe;

    [GlobalSetup]
    public void Setup()
    {
        var c = BenchDevice.Config();
        var dev = BenchDevice.Device;
        q = randn(1, c.NumHeads, Sequence, c.HeadDim, device: dev).to(DType); // [1, H, L, D]
        k = randn(1, c.NumHeads, Sequence, c.HeadDim, device: dev).to(DType);
        v = randn(1, c.NumHeads, Sequence, c.HeadDim, device: dev).to(DType);
        pe = BenchDevice.Rope(c, Sequence - Math.Min(512, Sequence / 2), Math.Min(512, Sequence / 2)); // [1, 1, L, D/2, 2, 2]
        BenchDevice.Sync();
        Console.WriteLine($"// SDPA: {c.NumHeads} heads x {c.HeadDim}, L {Sequence}, {DType} on {dev}");
    }

    [Benchmark(Baseline = true)]
    public void Sdpa()
    {
        using var scope = NewDisposeScope();
        functional.scaled_dot_product_attention(q!, k!, v!);
        BenchDevice.Sync();
    }

    [Benchmark]
    public void WithRope()
    {
        using var scope = NewDisposeScope();
        Flux2Math.Attention(q!, k!, v!, pe!);
        BenchDevice.Sync();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var t in new[] { q, k, v, pe }) t?.Dispose();
        GC.Collect();
    }
}
