using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using InferenceServer.Models;
using InferenceServer.Models.Files;
using InferenceServer.Models.Runtime;
using InferenceServer.Pipeline.Generation;
using Spectre.Console;
using static TorchSharp.torch;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server bench --model DIR [--size WxH] [--steps N] [--batch B] [--dtype bf16|fp8|int8|fp32] [--runs N]
/// [--warmup N] [--device auto|cpu|cuda] [--json FILE] [--prompt TEXT] [--peak-size N]</c>: end-to-end latency of the
/// <see cref="GenerationPipeline"/> per stage over N runs after the warm-up runs (Spectre table: mean, p50, min, max), and
/// the DiT's achieved TFLOP/s against the device's measured matmul peak.
/// <list type="bullet">
/// <item>Peak: a square n x n matmul in the model dtype (n = 8192 on CUDA, 1024 on the CPU), repeated for at least 0.5 s
/// after two untimed ones; 2 n^3 FLOP each.</item>
/// <item>DiT FLOP: <see cref="Flux2Flops"/> (linears 2 x weights x tokens, attention 4 L^2 h per block), per step per image,
/// times steps x images; achieved = that / the summed <c>denoise*</c> stage time.</item>
/// <item>Each run uses a distinct prompt (the prompt plus " #k"), so the text encoder runs every time (same padded length,
/// same cost) instead of hitting the prompt cache; seeds are fixed (run k: seed k), so runs are repeatable.</item>
/// <item>Runs happen inside <see cref="ComputeDevice.SynchronizedTiming"/>: on CUDA the sampler synchronises after each step
/// and the device is synchronised at the end of each run, so step times and the run's wall time are true. The pipeline's
/// other stage boundaries do not synchronise yet (its Stage() would call <see cref="ComputeDevice.SyncForTiming"/>): a GPU
/// stage's tail (text encode) can land in the next stage (step 0).</item>
/// </list>
/// <c>--batch B</c> asks for B images in one request (<c>n = B</c>). Bad input: exit code 2 and one line on stderr.
/// </summary>
internal static class BenchCommand
{
    /// <summary>The dtypes <c>--dtype</c> accepts (see <see cref="WeightsChoice"/>).</summary>
    static readonly string[] DTypes = ["bf16", "fp8", "int8", "fp32"];

    internal sealed record Settings(string Model, string Size, int? Steps, int Batch, string DType, int Runs, int Warmup, string Device,
        string? Json, string Prompt, int? PeakSize);

    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model folder (BFL or diffusers layout)", Required = true };
        var size = new Option<string>("--size") { Description = "WxH (rounded to multiples of 16 like any request)", DefaultValueFactory = _ => "1024x1024" };
        var steps = new Option<int?>("--steps") { Description = "Sampling steps (default: the model card's)" };
        var batch = new Option<int>("--batch") { Description = "Images per request (n)", DefaultValueFactory = _ => 1 };
        var dtype = new Option<string>("--dtype") { Description = "Weights: bf16, fp32 (fp8, int8: 8-bit transformer weights, bf16 compute)", DefaultValueFactory = _ => "bf16" };
        dtype.AcceptOnlyFromAmong(DTypes);
        var runs = new Option<int>("--runs") { Description = "Timed runs", DefaultValueFactory = _ => 5 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed runs first", DefaultValueFactory = _ => 1 };
        var device = new Option<string>("--device") { Description = "auto, cpu, cuda or cuda:N", DefaultValueFactory = _ => "auto" };
        var json = new Option<string?>("--json") { Description = "Write the results as JSON to FILE" };
        var prompt = new Option<string>("--prompt") { Description = "Prompt (each run appends \" #k\")", DefaultValueFactory = _ => "a red fox standing in fresh snow at golden hour, photograph" };
        var peak = new Option<int?>("--peak-size") { Description = "Side of the square matmul that measures the peak (default 8192 on CUDA, 1024 on the CPU)" };
        var command = new Command("bench", "End-to-end latency per stage and DiT TFLOP/s against the measured matmul peak")
            { model, size, steps, batch, dtype, runs, warmup, device, json, prompt, peak };
        command.SetAction(r =>
        {
            var s = new Settings(r.GetValue(model)!, r.GetValue(size)!, r.GetValue(steps), r.GetValue(batch), r.GetValue(dtype)!, r.GetValue(runs),
                r.GetValue(warmup), r.GetValue(device)!, r.GetValue(json), r.GetValue(prompt)!, r.GetValue(peak));
            return Run(s);
        });
        return command;
    }

    /// <summary>
    /// The compute dtype of a <c>--dtype</c> value: the one place 8-bit weights get wired in (fp8: F8_E4M3 weights with
    /// BF16 compute, int8: int8 weights with BF16 compute) when the quantization work lands; until then they are refused.
    /// </summary>
    /// <summary>The compute dtype (bf16 for the 8-bit choices, whose matmul peak is measured in bf16).</summary>
    internal static ScalarType ComputeDType(string dtype) => WeightsChoice.Parse(dtype).Compute;

    static int Run(Settings s)
    {
        if (s.Runs < 1) throw new ArgumentException($"--runs {s.Runs}: at least 1");
        if (s.Warmup < 0) throw new ArgumentException($"--warmup {s.Warmup}: 0 or more");
        if (s.Batch < 1) throw new ArgumentException($"--batch {s.Batch}: at least 1");
        if (s.PeakSize is < 16) throw new ArgumentException($"--peak-size {s.PeakSize}: at least 16");
        var dtype = ComputeDType(s.DType);
        var device = ComputeDevice.Resolve(s.Device);
        bool onCuda = ComputeDevice.IsCuda(device);
        AnsiConsole.MarkupLine($"device [bold]{device}[/], dtype {s.DType}, torch threads {get_num_threads()}");

        var (peakTflops, peakN, peakMs) = MeasureMatmulPeak(device, dtype, s.PeakSize ?? (onCuda ? 8192 : 1024));
        AnsiConsole.MarkupLine($"matmul peak: {peakTflops.ToString("F3", CultureInfo.InvariantCulture)} TFLOP/s ({peakN}x{peakN} {s.DType}, {peakMs.ToString("F2", CultureInfo.InvariantCulture)} ms each)");

        var load = Stopwatch.StartNew();
        using var pipeline = new GenerationPipeline(LoadProgressBar.Run(meter =>
            ModelFamilies.Load(s.Model, new ModelLoadOptions(dtype, WeightsChoice.Parse(s.DType).Quantization) { Device = device, Meter = meter })).Result);
        double loadMs = load.Elapsed.TotalMilliseconds;
        var model = pipeline.Backend;
        foreach (var line in model.LoadReport) AnsiConsole.MarkupLine(Markup.Escape(line));

        GenerationRequest Request(int k) => new()
        {
            Prompt = $"{s.Prompt} #{k}",
            Size = new SizeRequest(s.Size, null, null),
            Count = s.Batch,
            Seed = k,
            Steps = s.Steps,
        };

        var warmupMs = new List<double>();
        for (int k = 0; k < s.Warmup; k++) warmupMs.Add(TimedRun(pipeline, Request(s.Runs + k), device).WallMs);   // prompts and seeds the runs do not use
        if (warmupMs.Count > 0) AnsiConsole.MarkupLine($"warm-up: {string.Join(", ", warmupMs.Select(F1))} ms");

        var runs = new List<(GenerationResult Result, double WallMs)>();
        for (int k = 0; k < s.Runs; k++)
        {
            runs.Add(TimedRun(pipeline, Request(k), device));
            AnsiConsole.MarkupLine($"run {k + 1} of {s.Runs}: {F1(runs[^1].WallMs)} ms");
        }

        var report = Report(s, model, device, runs, warmupMs, loadMs, (peakTflops, peakN, peakMs));
        Print(report);
        if (s.Json is { } path)
        {
            var dir = Path.GetDirectoryName(Path.GetFullPath(path));
            if (dir is not null) Directory.CreateDirectory(dir);
            AtomicFile.WriteAllText(path, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            AnsiConsole.MarkupLine($"wrote [green]{Markup.Escape(path)}[/]");
        }
        return 0;
    }

    static (GenerationResult Result, double WallMs) TimedRun(GenerationPipeline pipeline, GenerationRequest request, Device device)
    {
        ComputeDevice.Synchronize(device);
        var sw = Stopwatch.StartNew();
        GenerationResult result;
        using (ComputeDevice.SynchronizedTiming())
            result = pipeline.Generate(request);
        ComputeDevice.Synchronize(device);
        return (result, sw.Elapsed.TotalMilliseconds);
    }

    /// <summary>Best-effort dense peak: TFLOP/s of an n x n x n matmul in <paramref name="dtype"/> on <paramref name="device"/>.</summary>
    internal static (double Tflops, int N, double MsEach) MeasureMatmulPeak(Device device, ScalarType dtype, int n)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var a = randn(n, n, device: device).to(dtype);
        var b = randn(n, n, device: device).to(dtype);
        for (int i = 0; i < 2; i++) a.mm(b).Dispose();
        ComputeDevice.Synchronize(device);
        int iters = 0;
        var sw = Stopwatch.StartNew();
        while (iters < 3 || (sw.Elapsed.TotalSeconds < 0.5 && iters < 1000))
        {
            // Queue a few at a time, then wait: the host must not run far ahead of the device, nor wait after each one.
            for (int i = 0; i < 4; i++) a.mm(b).Dispose();
            iters += 4;
            ComputeDevice.Synchronize(device);
        }
        double ms = sw.Elapsed.TotalMilliseconds / iters;
        return (2.0 * n * n * (double)n / (ms / 1e3) / 1e12, n, ms);
    }

    /// <summary>The whole result as JSON (also what the table prints).</summary>
    internal static JsonObject Report(Settings s, IFamilyBackend model, Device device, List<(GenerationResult Result, double WallMs)> runs,
        List<double> warmupMs, double loadMs, (double Tflops, int N, double MsEach) peak)
    {
        var first = runs[0].Result;
        long imageTokens = model.Geometry.Tokens(first.Width, first.Height);
        var flops = model.Flops(imageTokens, $"{s.Prompt} #0");
        long textTokens = flops.TextTokens;
        int images = first.Images.Count;

        // Stages in order of first appearance; every run of one request has the same stages.
        var names = runs.SelectMany(r => r.Result.Timings.Select(t => t.ToString())).Distinct().ToList();
        var perStage = names.ToDictionary(n => n, n => runs.Select(r => r.Result.Timings.Where(t => t.ToString() == n).Sum(t => t.Milliseconds)).ToArray());
        var denoise = runs.Select(r => r.Result.Milliseconds(Stage.Denoise)).ToArray();
        var stepTimes = runs.SelectMany(r => r.Result.Timings.Where(t => t.Stage == Stage.Denoise).Select(t => t.Milliseconds)).ToArray();
        var stages = new JsonArray();
        void AddStage(string name, double[] ms) => stages.Add(Stats(name, ms));
        foreach (var n in names) AddStage(n, perStage[n]);
        AddStage("denoise", denoise);
        AddStage("dit_step", stepTimes);
        AddStage("total", runs.Select(r => r.Result.Timings.Sum(t => t.Milliseconds)).ToArray());
        AddStage("wall", runs.Select(r => r.WallMs).ToArray());

        double flopStep = flops.Total;
        double flopRun = flopStep * first.Steps * images;
        var tflops = denoise.Select(ms => flopRun / (ms / 1e3) / 1e12).ToArray();
        double mean = tflops.Average();
        return new JsonObject
        {
            ["tool"] = "inference-server bench",
            ["utc"] = DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture),
            ["model"] = model.Directory,
            ["model_card"] = model.CardName,
            ["family"] = model.Family,
            ["device"] = device.ToString(),
            ["dtype"] = s.DType,
            ["weights"] = model.WeightFormat,
            ["torch_threads"] = get_num_threads(),
            ["size"] = $"{first.Width}x{first.Height}",
            ["width"] = first.Width,
            ["height"] = first.Height,
            ["steps"] = first.Steps,
            ["batch"] = images,
            ["runs"] = runs.Count,
            ["warmup"] = warmupMs.Count,
            ["image_tokens"] = imageTokens,
            ["text_tokens"] = textTokens,
            ["load_ms"] = loadMs,
            ["warmup_ms"] = new JsonArray([.. warmupMs.Select(v => (JsonNode)v)]),
            ["stages"] = stages,
            ["dit"] = new JsonObject
            {
                ["flop_per_step_per_image"] = flopStep,
                ["flop_linear_per_step_per_image"] = flops.Linear,
                ["flop_attention_per_step_per_image"] = flops.Attention,
                ["flop_per_run"] = flopRun,
                ["formula"] = flops.Formula,
                ["time"] = "sum of the pipeline's denoise* stage timings of a run (all steps of all images)",
                ["tflops_mean"] = mean,
                ["tflops_best"] = tflops.Max(),
                ["peak_tflops"] = peak.Tflops,
                ["fraction_of_peak"] = peak.Tflops > 0 ? (JsonNode)(mean / peak.Tflops) : null,
            },
            ["peak"] = new JsonObject
            {
                ["what"] = "square matmul a[n,n] @ b[n,n] in the model dtype, 2 n^3 FLOP each",
                ["n"] = peak.N,
                ["ms_each"] = peak.MsEach,
                ["tflops"] = peak.Tflops,
            },
            ["run_timings"] = new JsonArray([.. runs.Select(r => (JsonNode)new JsonObject
            {
                ["wall_ms"] = r.WallMs,
                ["stages"] = new JsonObject(r.Result.Timings.GroupBy(t => t.Name).Select(g => KeyValuePair.Create(g.Key, (JsonNode?)g.Sum(t => t.Milliseconds)))),
            })]),
        };
    }

    static JsonObject Stats(string name, double[] ms)
    {
        var sorted = ms.Order().ToArray();
        double p50 = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
        return new JsonObject
        {
            ["stage"] = name,
            ["mean_ms"] = ms.Average(),
            ["p50_ms"] = p50,
            ["min_ms"] = sorted[0],
            ["max_ms"] = sorted[^1],
            ["count"] = ms.Length,
        };
    }

    static void Print(JsonObject report)
    {
        var table = new Table().AddColumn("stage");
        foreach (var c in new[] { "mean ms", "p50 ms", "min ms", "max ms" }) table.AddColumn(new TableColumn(c).RightAligned());
        foreach (var st in report["stages"]!.AsArray())
        {
            string name = st!["stage"]!.GetValue<string>();
            bool summary = name is "denoise" or "dit_step" or "total" or "wall";
            string Cell(string key) => F1(st[key]!.GetValue<double>());
            table.AddRow(summary ? $"[bold]{Markup.Escape(name)}[/]" : Markup.Escape(name), Cell("mean_ms"), Cell("p50_ms"), Cell("min_ms"), Cell("max_ms"));
        }
        AnsiConsole.Write(table);
        var dit = report["dit"]!;
        double Get(JsonNode n, string k) => n[k]!.GetValue<double>();
        AnsiConsole.MarkupLine(
            $"{report["model_card"]}, {report["size"]}, {report["steps"]} steps, batch {report["batch"]}, {report["dtype"]} on {report["device"]}: " +
            $"DiT {Get(dit, "flop_per_step_per_image").ToString("E3", CultureInfo.InvariantCulture)} FLOP per step per image, " +
            $"achieved {Get(dit, "tflops_mean").ToString("F3", CultureInfo.InvariantCulture)} TFLOP/s mean " +
            $"({(Get(dit, "tflops_mean") / Get(dit, "peak_tflops") * 100).ToString("F1", CultureInfo.InvariantCulture)}% of the measured peak " +
            $"{Get(dit, "peak_tflops").ToString("F3", CultureInfo.InvariantCulture)} TFLOP/s)");
    }

    static string F1(double v) => v.ToString("F1", CultureInfo.InvariantCulture);
}
