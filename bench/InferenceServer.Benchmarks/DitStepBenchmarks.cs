using InferenceServer.Models.Runtime;
using BenchmarkDotNet.Attributes;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Flux2;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks;

/// <summary>
/// One DiT step (one transformer forward, batch 1) of each family at its real shape, in the same run: FLUX.2 [klein] 4B
/// (1024 image tokens = a 512x512 image, + 512 text tokens: klein always pads its prompt to 512) and Z-Image-Turbo 6B
/// (1024 image tokens + 128 caption rows: Z-Image drops the pads, so a typical prompt gives well under 512). Random weights
/// built in memory in BF16 (DIT_BENCH_DTYPE=fp32 for float32); peak RSS (VmHWM) printed at cleanup.
/// Run (a full-size step takes tens of seconds on a CPU): dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*DitStep*' --warmupCount 1 --iterationCount 3 --invocationCount 1 --unrollFactor 1
/// </summary>
[MemoryDiagnoser(false)]
public class DitStepBenchmarks
{
    [Params("flux2-klein-4b", "zimage-turbo")]
    public string Model { get; set; } = "zimage-turbo";

    static ScalarType DType => Environment.GetEnvironmentVariable("DIT_BENCH_DTYPE") == "fp32" ? ScalarType.Float32 : ScalarType.BFloat16;

    Action? step;
    IDisposable? owned;
    long peakRss;

    [GlobalSetup]
    public void Setup()
    {
        var dev = Blocks.BenchDevice.Device;
        if (Model.StartsWith("zimage", StringComparison.Ordinal))
        {
            var cfg = ZImageModelCard.Load(Model).Transformer;
            var model = new ZImageTransformer(cfg, dev, DType);
            var x = randn(1, 1024, cfg.PatchDim, device: dev).to(DType);
            var caption = randn(128, cfg.CapFeatDim, device: dev).to(DType);
            var t = full(1, 0.3f, device: dev);
            owned = model;
            step = () => model.Forward(x, 32, 32, t, [caption]);
            Console.WriteLine($"// Z-Image step: {cfg.NLayers} layers + 2x{cfg.NRefinerLayers} refiners, dim {cfg.Dim}, {ZImageSpecs.ParameterCount(cfg):N0} parameters, {DType}, 1024 image + 128 caption tokens, torch threads {get_num_threads()}");
        }
        else
        {
            var cfg = ModelCards.Load(Model).Transformer;
            var model = new Flux2Transformer(cfg, device: dev, dtype: DType);
            var (x, xIds) = Flux2Packing.BatchedPrcImg(randn(1, cfg.InChannels, 32, 32, device: dev).to(DType));
            var (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(randn(1, 512, cfg.ContextInDim, device: dev).to(DType));
            var t = full(1, 0.3f, device: dev);
            owned = model;
            step = () => model.Forward(x, xIds, t, ctx, ctxIds);
            Console.WriteLine($"// FLUX.2 step: {cfg.Depth} double + {cfg.DepthSingleBlocks} single blocks, hidden {cfg.HiddenSize}, {Flux2Specs.ParameterCount(cfg):N0} parameters, {DType}, 1024 image + 512 text tokens, torch threads {get_num_threads()}");
        }
    }

    [IterationSetup]
    public void ResetPeak()
    {
        ProcessMemory.ResetPeak();
    }

    [Benchmark]
    public void Step()
    {
        using var scope = NewDisposeScope();
        step!();
        Blocks.BenchDevice.Sync();
        peakRss = Math.Max(peakRss, StatusKb("VmHWM"));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        Console.WriteLine($"// {Model}: peak RSS during steps {peakRss / 1024.0 / 1024.0:F2} GiB (VmHWM)");
        owned?.Dispose();
        step = null;
        peakRss = 0;
        GC.Collect();
    }

    static long StatusKb(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key + ":", StringComparison.Ordinal)) return long.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0]);
        return 0;
    }
}
