using BenchmarkDotNet.Attributes;
using InferenceServer.Models.Flux2;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks.Blocks;

/// <summary>
/// One FLUX.2 double-stream block and one single-stream block at the card's width (klein-4B: hidden 3072, 24 heads x 128,
/// MLP 9216), random weights built on the device in the benchmark dtype, with realistic token counts (default 256 image +
/// 512 text; FLUX2_BENCH_TOKENS for more, e.g. "256+512,4096+512,16384+512"). Device: BENCH_DEVICE; dtypes:
/// FLUX2_BENCH_DTYPES; card: FLUX2_BENCH_CARD (see <see cref="BenchDevice"/>). A whole step is 5 double + 20 single blocks
/// at klein-4B, plus the embedders and the final layer (<see cref="Flux2StepBenchmarks"/>).
/// Run: dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*StreamBlock*'
/// </summary>
[MemoryDiagnoser(false)]
public class StreamBlockBenchmarks
{
    [ParamsSource(nameof(DTypes))]
    public ScalarType DType { get; set; }

    [ParamsSource(nameof(TokenCases))]
    public TokenCounts Tokens { get; set; }

    public static IEnumerable<ScalarType> DTypes() => BenchDevice.DTypes();
    public static IEnumerable<TokenCounts> TokenCases() => BenchDevice.Tokens();

    DoubleStreamBlock? doubleBlock;
    SingleStreamBlock? singleBlock;
    Tensor? img, txt, joint, pe;
    Tensor[]? modImg, modTxt, modSingle;

    [GlobalSetup]
    public void Setup()
    {
        var c = BenchDevice.Config();
        var dev = BenchDevice.Device;
        using var noGrad = no_grad();
        doubleBlock = new DoubleStreamBlock(c, dev, DType);
        singleBlock = new SingleStreamBlock(c, dev, DType);
        foreach (var p in doubleBlock.parameters().Concat(singleBlock.parameters())) p.requires_grad = false;
        int li = Tokens.Image, lt = Tokens.Text;
        img = randn(1, li, c.HiddenSize, device: dev).to(DType);              // [1, Li, hidden]
        txt = randn(1, lt, c.HiddenSize, device: dev).to(DType);              // [1, Lt, hidden]
        joint = cat([txt, img], 1);                                           // [1, Lt+Li, hidden]
        pe = BenchDevice.Rope(c, li, lt);                                     // [1, 1, Lt+Li, D/2, 2, 2]
        Tensor[] Mod(int n) => Enumerable.Range(0, n).Select(_ => (randn(1, 1, c.HiddenSize, device: dev) * 0.1).to(DType)).ToArray(); // n x [1, 1, hidden]
        (modImg, modTxt, modSingle) = (Mod(6), Mod(6), Mod(3));
        BenchDevice.Sync();
        Console.WriteLine($"// stream blocks: hidden {c.HiddenSize}, {c.NumHeads} heads, mlp {c.MlpHiddenDim}, {li} image + {lt} text tokens, {DType} on {dev}, " +
            $"FLOP double {2 * (4.0 * c.HiddenSize * c.HiddenSize + 3.0 * c.HiddenSize * c.MlpHiddenDim) * (li + lt) + 4.0 * (li + lt) * (li + lt) * c.HiddenSize:E3} " +
            "(same for single)");
    }

    [Benchmark]
    public void DoubleStream()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        doubleBlock!.forward(img!, txt!, pe!, modImg!, modTxt!);
        BenchDevice.Sync();
    }

    [Benchmark]
    public void SingleStream()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        singleBlock!.forward(joint!, pe!, modSingle!);
        BenchDevice.Sync();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        doubleBlock?.Dispose();
        singleBlock?.Dispose();
        foreach (var t in new[] { img, txt, joint, pe }.Concat(modImg ?? []).Concat(modTxt ?? []).Concat(modSingle ?? [])) t?.Dispose();
        GC.Collect();
    }
}
