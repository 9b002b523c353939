using System.CommandLine;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Runtime;
using InferenceServer.Models.ZImage;
using Spectre.Console;
using static TorchSharp.torch;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server random-checkpoint --preset tiny|klein-4b|klein-9b|zimage-turbo|zimage-tiny [--layout bfl|diffusers|single-file] --out DIR [--dtype bf16|fp32|fp8|int8] [--seed S]</c>:
/// writes a random-weight checkpoint of the real shapes (transformer, VAE, text encoder and tokenizer: a complete model folder), streamed tensor by tensor so a
/// full-size preset never sits in memory. BFL: <c>DIR/flux-2-klein-4b.safetensors</c>; diffusers: <c>DIR/transformer/</c>
/// shards + index + config.json; see Flux2ModelFolder for the whole layout. <c>--dtype fp8</c> (BFL layout): the transformer in the
/// official scaled-FP8 layout (<c>flux-2-klein-4b-fp8.safetensors</c>: E4M3 weights + float32 per-tensor scales; int8 likewise with
/// per-channel scales), the other components in bf16. Z-Image presets: the released diffusers layout by default, or
/// <c>--layout single-file</c> (one official-naming transformer file + ae.safetensors); 8-bit is chosen at load (<c>--dtype</c> of the other verbs).
/// </summary>
internal static class RandomCheckpointCommand
{
    // FLUX.2 presets name models/flux2-PRESET.json; Z-Image presets name models/PRESET.json. (flux2-dev is not offered: its
    // Mistral text encoder has no card or writer.)
    static readonly string[] Presets = ["tiny", "klein-4b", "klein-9b", "zimage-turbo", "zimage-tiny"];

    public static Command Create()
    {
        var preset = new Option<string>("--preset") { Description = "Model preset (FLUX.2: models/flux2-PRESET.json; Z-Image: models/PRESET.json)", Required = true };
        preset.AcceptOnlyFromAmong(Presets);
        var layout = new Option<string?>("--layout") { Description = "FLUX.2: bfl (default, one official file) or diffusers; Z-Image: diffusers (default) or single-file" };
        layout.AcceptOnlyFromAmong("bfl", "diffusers", "single-file");
        var outDir = new Option<string>("--out") { Description = "Output folder", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Stored dtype (fp8 / int8: 8-bit transformer, the rest bf16; BFL layout)", DefaultValueFactory = _ => "bf16" };
        dtype.AcceptOnlyFromAmong("bf16", "fp32", "fp8", "int8");
        var seed = new Option<long>("--seed") { Description = "Random seed (each tensor from (seed, key))", DefaultValueFactory = _ => 0 };
        var command = new Command("random-checkpoint", "Write a random-weight model folder of a preset's real shapes (transformer, VAE, text encoder, tokenizer)") { preset, layout, outDir, dtype, seed };
        command.SetAction(r => Run(r.GetValue(preset)!, r.GetValue(layout), r.GetValue(outDir)!, r.GetValue(dtype)!, r.GetValue(seed)));
        return command;
    }

    static int Run(string preset, string? layoutName, string outDir, string dtypeName, long seed)
    {
        TorchRuntime.EnsureInitialized();
        if (preset.StartsWith("zimage-", StringComparison.Ordinal)) return RunZImage(preset, layoutName ?? "diffusers", outDir, dtypeName, seed);
        layoutName ??= "bfl";
        if (layoutName == "single-file") throw new ArgumentException("--layout single-file is for Z-Image presets; FLUX.2 writes bfl or diffusers");
        var card = ModelCards.Load("flux2-" + preset);
        var layout = layoutName == "diffusers" ? Flux2Layout.Diffusers : Flux2Layout.Bfl;
        var dtype = dtypeName == "fp32" ? ScalarType.Float32 : ScalarType.BFloat16;
        var quantization = dtypeName is "fp8" or "int8" ? WeightQuantizer.Parse(dtypeName) : WeightQuantization.None;
        if (quantization != WeightQuantization.None && layout != Flux2Layout.Bfl) throw new ArgumentException($"--dtype {dtypeName} writes the BFL layout only");
        var specs = Flux2RandomCheckpoint.Specs(card.Transformer, layout, dtype);
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(card.Name)}[/]: transformer {specs.Count} tensors, {Flux2Specs.ParameterCount(card.Transformer):N0} parameters; VAE {Markup.Escape(card.Vae)}; text encoder {Markup.Escape(card.TextEncoder)}; {dtypeName}, layout {layoutName}, seed {seed}");
        WithProgress(progress => Flux2RandomModel.Write(card, layout, outDir, dtype, seed, progress, quantization));
        AnsiConsole.MarkupLine($"wrote [green]{Markup.Escape(Path.GetFullPath(outDir))}[/] (transformer, VAE, text encoder, tokenizer)");
        return 0;
    }

    static int RunZImage(string preset, string layoutName, string outDir, string dtypeName, long seed)
    {
        if (layoutName == "bfl" || dtypeName is "fp8" or "int8")
            throw new ArgumentException($"Z-Image folders are written as diffusers or single-file in bf16/fp32; choose 8-bit at load time (--dtype {dtypeName} on serve, generate, bench)");
        var card = ZImageModelCard.Load(preset);
        var dtype = dtypeName == "fp32" ? ScalarType.Float32 : ScalarType.BFloat16;
        var specs = ZImageSpecs.Transformer(card.Transformer, dtype);
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(card.Name)}[/]: transformer {specs.Count} tensors, {ZImageSpecs.ParameterCount(card.Transformer):N0} parameters; VAE {Markup.Escape(card.Vae)}; text encoder {Markup.Escape(card.TextEncoder)}; {dtypeName}, layout {layoutName}, seed {seed}");
        WithProgress(progress => ZImageRandomModel.Write(card, outDir, dtype, seed, singleFile: layoutName == "single-file", progress));
        AnsiConsole.MarkupLine($"wrote [green]{Markup.Escape(Path.GetFullPath(outDir))}[/] (transformer, VAE, text encoder, tokenizer)");
        return 0;
    }

    /// <summary>One progress bar per component, updated on the writing thread.</summary>
    static void WithProgress(Action<Action<string, long, long>> write) =>
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>();
                write((component, done, total) =>
                {
                    if (!tasks.TryGetValue(component, out var task)) tasks[component] = task = ctx.AddTask(component, maxValue: Math.Max(1, total));
                    task.Value = done;
                });
            });
}
