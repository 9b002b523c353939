using InferenceServer.Models.Runtime;
using BenchmarkDotNet.Attributes;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Quantization;
using InferenceServer.Pipeline.Flux2;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks;

/// <summary>
/// One FLUX.2 DiT step (one transformer forward) at the klein-4B shape: 256 image tokens (a 256x256 image: 16x16
/// tokens) + 512 text tokens, random weights built in memory, FP32 and BF16. The environment variables
/// FLUX2_BENCH_DTYPES (default "bf16,fp32"), FLUX2_BENCH_CARD (default flux2-klein-4b), FLUX2_BENCH_DEPTH and FLUX2_BENCH_SINGLE (block counts; default the
/// card's) allow a reduced-depth run of the same widths when memory is short; per-block cost then extrapolates.
/// Peak RSS (VmHWM, reset before each iteration) is printed at cleanup. Device: BENCH_DEVICE (auto: CUDA when present, see
/// <see cref="Blocks.BenchDevice"/>); on CUDA each step ends with a device synchronise.
/// Run: dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*Flux2Step*'
/// </summary>
[MemoryDiagnoser(false)]
public class Flux2StepBenchmarks
{
    /// <summary>bf16, fp32, int8 or fp8 (8-bit: the transformer's linears quantized in memory, bf16 compute).</summary>
    [ParamsSource(nameof(DTypes))]
    public string Weights { get; set; } = "bf16";

    ScalarType DType => Weights == "fp32" ? ScalarType.Float32 : ScalarType.BFloat16;

    /// <summary>bf16 and fp32, or those named in FLUX2_BENCH_DTYPES (e.g. "bf16,fp32,int8,fp8").</summary>
    public static IEnumerable<string> DTypes() =>
        (Environment.GetEnvironmentVariable("FLUX2_BENCH_DTYPES") ?? "bf16,fp32").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(n => n is "bf16" or "fp32" or "int8" or "fp8" ? n : throw new ArgumentException($"FLUX2_BENCH_DTYPES: unknown dtype '{n}' (bf16, fp32, int8, fp8)"));

    Flux2Transformer? model;
    Tensor? x, xIds, ctx, ctxIds, t;
    long peakRss;

    [GlobalSetup]
    public void Setup()
    {
        var cfg = ModelCards.Load(Environment.GetEnvironmentVariable("FLUX2_BENCH_CARD") ?? "flux2-klein-4b").Transformer;
        if (int.TryParse(Environment.GetEnvironmentVariable("FLUX2_BENCH_DEPTH"), out int d)) cfg = cfg with { Depth = d };
        if (int.TryParse(Environment.GetEnvironmentVariable("FLUX2_BENCH_SINGLE"), out int s)) cfg = cfg with { DepthSingleBlocks = s };
        var dev = Blocks.BenchDevice.Device;
        model = new Flux2Transformer(cfg, device: dev, dtype: DType); // built directly in DType on the device: no FP32 copy of a BF16 model
        if (Weights is "int8" or "fp8")
        {
            var q = WeightQuantizer.Parse(Weights);
            WeightQuantizer.QuantizeInPlace(model, WeightQuantizer.FormatOf(q), Flux2Quantize.Select(q));
            GC.Collect();
        }
        (x, xIds) = Flux2Packing.BatchedPrcImg(randn(1, cfg.InChannels, 16, 16, device: dev));
        (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(randn(1, 512, cfg.ContextInDim, device: dev));
        t = full(1, 0.9f, device: dev);
        Console.WriteLine($"// FLUX.2 step benchmark: {cfg.Depth} double + {cfg.DepthSingleBlocks} single blocks, hidden {cfg.HiddenSize}, " +
            $"{Flux2Specs.ParameterCount(cfg):N0} parameters, {Weights} ({model.WeightFormat}), {x.shape[1]} image + {ctx.shape[1]} text tokens, torch threads {get_num_threads()}, device {dev}");
    }

    [IterationSetup]
    public void ResetPeak() => ProcessMemory.ResetPeak();

    [Benchmark]
    public void Step()
    {
        using var scope = NewDisposeScope();
        model!.Forward(x!, xIds!, t!, ctx!, ctxIds!);
        Blocks.BenchDevice.Sync();
        peakRss = Math.Max(peakRss, ProcessMemory.Peak / 1024);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        Console.WriteLine($"// {Weights}: peak RSS during steps {peakRss / 1024.0 / 1024.0:F2} GiB (VmHWM), RSS now {ProcessMemory.Rss / 1024.0 / 1024.0 / 1024.0:F2} GiB");
        model?.Dispose();
        foreach (var v in new[] { x, xIds, ctx, ctxIds, t }) v?.Dispose();
        peakRss = 0;
        GC.Collect();
    }
}
