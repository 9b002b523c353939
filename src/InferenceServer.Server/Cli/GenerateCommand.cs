using System.CommandLine;
using System.Globalization;
using InferenceServer.Models;
using InferenceServer.Models.Files;
using InferenceServer.Models.Lora;
using InferenceServer.Models.Runtime;
using InferenceServer.Models.Weights;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Lora;
using Spectre.Console;
using static TorchSharp.torch;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server generate --model DIR --prompt TEXT [--image FILE]... [--size WxH|W:H|auto | --aspect-ratio R --resolution T]
/// [--n K] [--seed S] [--steps N] [--guidance G] [--format png|jpeg|webp|avif] [--quality Q] [--dtype bf16|fp32|fp8|int8] [--device auto|cpu|cuda]
/// [--lora NAME_OR_FILE[:SCALE]]... [--lora-dir DIR] --out FILE</c>;
/// <c>edit</c> is the same verb and requires at least one <c>--image</c>. With n &gt; 1 the files are FILE-0.ext, FILE-1.ext, ...
/// A progress bar per step, then the stage timings. Bad input: exit code 2 and one line on stderr.
/// </summary>
internal static class GenerateCommand
{
    public static Command Create(string name)
    {
        bool edit = name == "edit";
        var model = new Option<string>("--model") { Description = "Model folder (BFL or diffusers layout)", Required = true };
        var prompt = new Option<string>("--prompt") { Description = "The prompt", Required = true };
        var image = new Option<string[]>("--image") { Description = "Reference image (PNG, JPEG, WebP); repeat for several (at most 10)", AllowMultipleArgumentsPerToken = false, Required = edit };
        var size = new Option<string?>("--size") { Description = "WxH, W:H or auto (wins over --aspect-ratio/--resolution)" };
        var aspect = new Option<string?>("--aspect-ratio") { Description = "W:H, mapped to the nearest supported shape" };
        var resolution = new Option<string?>("--resolution") { Description = "1K, 2K or 4K" };
        var n = new Option<int>("--n") { Description = "Number of images", DefaultValueFactory = _ => 1 };
        var seed = new Option<long?>("--seed") { Description = "Seed of the first image (image i uses seed + i); default: random, reported" };
        var steps = new Option<int?>("--steps") { Description = "Sampling steps (default: the model card's)" };
        var guidance = new Option<double?>("--guidance") { Description = "Guidance (models that embed it, or CFG models)" };
        var format = new Option<string>("--format") { Description = "png, jpeg, webp or avif", DefaultValueFactory = _ => "png" };
        var quality = new Option<int?>("--quality") { Description = "0-100" };
        var dtype = new Option<string>("--dtype") { Description = "Weights: bf16, fp32, fp8 or int8 (8-bit transformer weights, bf16 compute)", DefaultValueFactory = _ => "bf16" };
        dtype.AcceptOnlyFromAmong(WeightsChoice.Names);
        var device = new Option<string>("--device") { Description = "auto (CUDA when libtorch has it and sees a GPU), cpu, cuda or cuda:N", DefaultValueFactory = _ => "auto" };
        var mmap = new Option<string>("--mmap") { Description = "CPU weights as memory maps of the files: auto (files on a read-only filesystem), on, off", DefaultValueFactory = _ => "auto" };
        mmap.AcceptOnlyFromAmong(WeightMappings.Names);
        var repeat = new Option<int>("--repeat") { Description = "Run the request this many times in one process (timings of each; repeats hit the prompt cache)", DefaultValueFactory = _ => 1 };
        var lora = new Option<string[]>("--lora") { Description = "LoRA adapter: a .safetensors file or a name in --lora-dir, with an optional :SCALE (default 1); repeat for several", AllowMultipleArgumentsPerToken = false };
        var loraDir = new Option<string?>("--lora-dir") { Description = "Folder where --lora names are looked up (NAME.safetensors)" };
        var outFile = new Option<string>("--out") { Description = "Output file (n > 1: FILE-0.ext, FILE-1.ext, ...)", Required = true };
        var command = new Command(name, edit ? "Edit: generate from a prompt and one or more reference images" : "Generate images from a prompt (and optional reference images)")
            { model, prompt, image, size, aspect, resolution, n, seed, steps, guidance, format, quality, dtype, device, mmap, repeat, lora, loraDir, outFile };
        command.SetAction(r =>
        {
            if (!ImageFormats.TryParse(r.GetValue(format), out var fmt)) throw new ArgumentException($"format '{r.GetValue(format)}': expected {ImageFormats.Accepted}");
            var files = r.GetValue(image) ?? [];
            if (edit && files.Length == 0) throw new ArgumentException("edit needs at least one --image");
            var refs = files.Select(f => File.Exists(f) ? File.ReadAllBytes(f) : throw new ArgumentException($"image {f}: no such file")).ToList();
            var request = new GenerationRequest
            {
                Prompt = r.GetValue(prompt)!,
                References = refs,
                Size = new SizeRequest(r.GetValue(size), r.GetValue(aspect), r.GetValue(resolution)),
                Count = r.GetValue(n),
                Seed = r.GetValue(seed),
                Steps = r.GetValue(steps),
                Guidance = r.GetValue(guidance),
                Format = fmt,
                Quality = r.GetValue(quality),
            };
            // Files are found before the model loads, so a wrong name fails at once.
            var dir = r.GetValue(loraDir);
            var adapters = (r.GetValue(lora) ?? []).Select(LoraSpec.Parse).Select(l => (Path: l.Resolve(dir), l.Scale)).ToList();
            return Run(r.GetValue(model)!, request, adapters, r.GetValue(dtype)!, r.GetValue(device)!, WeightMappings.Parse(r.GetValue(mmap)!), r.GetValue(outFile)!, Math.Max(1, r.GetValue(repeat)));
        });
        return command;
    }

    /// <summary>Output file of image <paramref name="i"/> of <paramref name="n"/>: FILE itself for one, FILE-i.ext for several.</summary>
    internal static string OutputPath(string file, int i, int n) =>
        n == 1 ? file : Path.Combine(Path.GetDirectoryName(file) ?? "", $"{Path.GetFileNameWithoutExtension(file)}-{i}{Path.GetExtension(file)}");

    static int Run(string modelDir, GenerationRequest request, IReadOnlyList<(string Path, double Scale)> loras, string weights, string deviceName,
        WeightMapping mapping, string outFile, int repeat)
    {
        TorchRuntime.EnsureInitialized();
        var device = ComputeDevice.Resolve(deviceName);
        var load = System.Diagnostics.Stopwatch.StartNew();
        var (dtype, quantization) = WeightsChoice.Parse(weights);
        using var pipeline = new GenerationPipeline(LoadProgressBar.Run(meter =>
            ModelFamilies.Load(modelDir, new ModelLoadOptions(dtype, quantization) { Device = device, Meter = meter, Mapping = mapping })).Result);
        foreach (var line in pipeline.Backend.LoadReport) AnsiConsole.MarkupLine(Markup.Escape(line));
        AnsiConsole.MarkupLine($"loaded in {load.Elapsed.TotalSeconds:F1} s");
        var adapters = new List<LoraAdapter>();
        try
        {
            foreach (var (path, _) in loras)
            {
                adapters.Add(pipeline.LoadAdapter(path));
                AnsiConsole.MarkupLine($"LoRA {Markup.Escape(adapters[^1].ToString())}");
            }
            request = request with { Loras = adapters.Select((a, i) => new LoraUse(a, loras[i].Scale)).ToList() };
            return Generate(pipeline, request, device, outFile, repeat);
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }
    }

    static int Generate(GenerationPipeline pipeline, GenerationRequest request, Device device, string outFile, int repeat)
    {
        if (ComputeDevice.IsCuda(device)) AnsiConsole.MarkupLine($"warm-up on {device}: {pipeline.WarmUp():F0} ms");
        for (int run = 0; run < repeat; run++)
        {
            if (repeat > 1) AnsiConsole.MarkupLine($"[bold]run {run + 1} of {repeat}[/]");
            Once(pipeline, request, outFile);
        }
        return 0;
    }

    static void Once(GenerationPipeline pipeline, GenerationRequest request, string outFile)
    {
        GenerationResult? result = null;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var tasks = new Dictionary<int, ProgressTask>();
                result = pipeline.Generate(request, s =>
                {
                    if (!tasks.TryGetValue(s.Image, out var t)) tasks[s.Image] = t = ctx.AddTask($"image {s.Image}", maxValue: s.Steps);
                    t.Value = s.Step + 1;
                });
            });
        var res = result!;
        var dir = Path.GetDirectoryName(Path.GetFullPath(outFile));
        if (dir is not null) Directory.CreateDirectory(dir);
        for (int i = 0; i < res.Images.Count; i++)
        {
            string path = OutputPath(outFile, i, res.Images.Count);
            AtomicFile.WriteAllBytes(path, res.Images[i].Image.Bytes); // never a 0-byte or cut image under the final name
            AnsiConsole.MarkupLine($"wrote [green]{Markup.Escape(path)}[/] ({res.Width}x{res.Height}, seed {res.Images[i].Seed})");
        }
        var table = new Table().AddColumn("stage").AddColumn(new TableColumn("ms").RightAligned());
        foreach (var t in res.Timings) table.AddRow(Markup.Escape(t.ToString()), t.Milliseconds.ToString("F1", CultureInfo.InvariantCulture));
        table.AddRow("[bold]total[/]", res.Timings.Sum(t => t.Milliseconds).ToString("F1", CultureInfo.InvariantCulture));
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"size {res.Width}x{res.Height}, seed {res.Seed}, steps {res.Steps}, references {res.References}, prompt cache {(res.PromptCacheHit ? "hit" : "miss")}");
    }
}
