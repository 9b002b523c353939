using BenchmarkDotNet.Attributes;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Lora;
using InferenceServer.Pipeline.Flux2;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks;

/// <summary>
/// The cost of per-request LoRA on one FLUX.2 [klein] 4B DiT step (random BF16 weights in memory; 256 image tokens = a
/// 256x256 image, + 512 text tokens): no adapter, one rank-16 / rank-64 adapter on every linear applied per row (the
/// serving path), the rank-64 adapter merged into the weights (what <c>--lora-merge</c> costs per step: nothing), and a
/// batch of 4 rows without adapters against 4 rows with 4 different rank-32 adapters.
/// Run: dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*LoraStep*' --warmupCount 1 --iterationCount 3 --invocationCount 1 --unrollFactor 1
/// (LORA_BENCH_VARIANTS=none,r64 for some of them).
/// </summary>
public class LoraStepBenchmarks
{
    [ParamsSource(nameof(Variants))]
    public string Variant { get; set; } = "none";

    /// <summary>All variants, or those named in LORA_BENCH_VARIANTS (comma-separated), in that order.</summary>
    public static IEnumerable<string> Variants() =>
        Environment.GetEnvironmentVariable("LORA_BENCH_VARIANTS")?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
        ?? ["none", "r16", "r64", "r64-merged", "b4-none", "b4-4x-r32"];

    Flux2Transformer? model;
    LoraRuntime? runtime;
    readonly List<LoraAdapter> adapters = [];
    IReadOnlyList<IReadOnlyList<LoraUse>> rows = [];
    Tensor? x, xIds, ctx, ctxIds, t;
    string? dir;

    [GlobalSetup]
    public void Setup()
    {
        var dev = Blocks.BenchDevice.Device;
        var cfg = ModelCards.Load("flux2-klein-4b").Transformer;
        model = new Flux2Transformer(cfg, device: dev, dtype: ScalarType.BFloat16);
        var targets = LoraTargets.Of(model, Flux2LoraNaming.Instance);
        runtime = new LoraRuntime(targets);
        dir = Directory.CreateTempSubdirectory("lora-bench-").FullName;
        LoraAdapter Adapter(int rank, long seed)
        {
            string path = Path.Combine(dir, $"r{rank}-{seed}.safetensors");
            var layers = LoraWriter.Random(targets, rank, seed);
            LoraWriter.Write(path, targets, layers, LoraFileFormat.Bfl);
            foreach (var (_, d, u) in layers) { d.Dispose(); u.Dispose(); }
            var a = LoraAdapter.Load(path, targets, ScalarType.BFloat16, dev);
            adapters.Add(a);
            Console.WriteLine($"// {a}");
            return a;
        }
        int batch = Variant.StartsWith("b4", StringComparison.Ordinal) ? 4 : 1;
        rows = Variant switch
        {
            "r16" => [[new LoraUse(Adapter(16, 1), 1)]],
            "r64" => [[new LoraUse(Adapter(64, 1), 1)]],
            "b4-4x-r32" => Enumerable.Range(0, 4).Select(i => (IReadOnlyList<LoraUse>)[new LoraUse(Adapter(32, i + 1), 1)]).ToList(),
            _ => [],
        };
        if (Variant == "r64-merged") runtime.Merge(Adapter(64, 1), 1);
        (x, xIds) = Flux2Packing.BatchedPrcImg(randn(batch, cfg.InChannels, 16, 16, device: dev).to(ScalarType.BFloat16));
        (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(randn(batch, 512, cfg.ContextInDim, device: dev).to(ScalarType.BFloat16));
        t = full(batch, 0.3f, device: dev);
        Console.WriteLine($"// {Variant}: batch {batch}, 256 image + 512 text tokens per row, BF16, torch threads {get_num_threads()}");
    }

    [Benchmark]
    public void Step()
    {
        using var scope = NewDisposeScope();
        using var adapted = rows.Count > 0 ? runtime!.Use(rows) : null;
        model!.Forward(x!, xIds!, t!, ctx!, ctxIds!);
        Blocks.BenchDevice.Sync();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var a in adapters) a.Dispose();
        adapters.Clear();
        runtime?.Dispose();
        model?.Dispose();
        foreach (var tensor in new[] { x, xIds, ctx, ctxIds, t }) tensor?.Dispose();
        if (dir is not null) Directory.Delete(dir, recursive: true);
        GC.Collect();
    }
}

/// <summary>
/// Loading a ~150 MB adapter (BF16 file, every linear of FLUX.2 [klein] 4B at rank 24) onto the model's layers: reading,
/// validation against the layer shapes, and the copy into the model dtype. The model is built on the meta device (shapes
/// only), so this measures the adapter alone.
/// Run: dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*LoraLoad*' --warmupCount 1 --iterationCount 5
/// </summary>
public class LoraLoadBenchmarks
{
    LoraTargets? targets;
    Flux2Transformer? model;
    string? path;

    [GlobalSetup]
    public void Setup()
    {
        var cfg = ModelCards.Load("flux2-klein-4b").Transformer;
        model = new Flux2Transformer(cfg, device: new Device("meta"), dtype: ScalarType.BFloat16);
        targets = LoraTargets.Of(model, Flux2LoraNaming.Instance);
        long perRank = targets.Layers.Values.Sum(s => s.In + s.Out) * 2;  // bytes per unit of rank in BF16
        int rank = (int)Math.Round(150e6 / perRank);
        path = Path.Combine(Directory.CreateTempSubdirectory("lora-load-").FullName, "adapter.safetensors");
        var layers = LoraWriter.Random(targets, rank, 7);
        LoraWriter.Write(path, targets, layers, LoraFileFormat.Kohya);
        foreach (var (_, d, u) in layers) { d.Dispose(); u.Dispose(); }
        Console.WriteLine($"// adapter: rank {rank}, {targets.Layers.Count} linears, {new FileInfo(path).Length / 1e6:F1} MB (kohya layout, with alphas)");
    }

    [Benchmark]
    public long Load()
    {
        using var a = LoraAdapter.Load(path!, targets!, ScalarType.BFloat16);
        return a.Bytes;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        model?.Dispose();
        if (path is not null) Directory.Delete(Path.GetDirectoryName(path)!, recursive: true);
    }
}
