using System.CommandLine;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Runtime;
using Spectre.Console;
using static TorchSharp.torch;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server random-checkpoint --preset tiny|klein-4b|klein-9b --layout bfl|diffusers --out DIR [--dtype bf16|fp32|fp8|int8] [--seed S]</c>:
/// writes a random-weight checkpoint of the real shapes (transformer, VAE, text encoder and tokenizer: a complete model folder), streamed tensor by tensor so a
/// full-size preset never sits in memory. BFL: <c>DIR/flux-2-klein-4b.safetensors</c>; diffusers: <c>DIR/transformer/</c>
/// shards + index + config.json; see Flux2ModelFolder for the whole layout. <c>--dtype fp8</c> (BFL layout): the transformer in the
/// official scaled-FP8 layout (<c>flux-2-klein-4b-fp8.safetensors</c>: E4M3 weights + float32 per-tensor scales; int8 likewise with
/// per-channel scales), the other components in bf16.
/// </summary>
internal static class RandomCheckpointCommand
{
    static readonly string[] Presets = ["tiny", "klein-4b", "klein-9b", "dev"];

    public static Command Create()
    {
        var preset = new Option<string>("--preset") { Description = "Model preset (models/flux2-PRESET.json)", Required = true };
        preset.AcceptOnlyFromAmong(Presets);
        var layout = new Option<string>("--layout") { Description = "bfl (one official file) or diffusers (transformer/ shards)", DefaultValueFactory = _ => "bfl" };
        layout.AcceptOnlyFromAmong("bfl", "diffusers");
        var outDir = new Option<string>("--out") { Description = "Output folder", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Stored dtype (fp8 / int8: 8-bit transformer, the rest bf16; BFL layout)", DefaultValueFactory = _ => "bf16" };
        dtype.AcceptOnlyFromAmong("bf16", "fp32", "fp8", "int8");
        var seed = new Option<long>("--seed") { Description = "Random seed (each tensor from (seed, key))", DefaultValueFactory = _ => 0 };
        var command = new Command("random-checkpoint", "Write a random-weight FLUX.2 checkpoint of a preset's real shapes (transformer, VAE, text encoder, tokenizer)") { preset, layout, outDir, dtype, seed };
        command.SetAction(r => Run(r.GetValue(preset)!, r.GetValue(layout)!, r.GetValue(outDir)!, r.GetValue(dtype)!, r.GetValue(seed)));
        return command;
    }

    static int Run(string preset, string layoutName, string outDir, string dtypeName, long seed)
    {
        TorchRuntime.EnsureInitialized();
        var card = ModelCards.Load("flux2-" + preset);
        var layout = layoutName == "diffusers" ? Flux2Layout.Diffusers : Flux2Layout.Bfl;
        var dtype = dtypeName == "fp32" ? ScalarType.Float32 : ScalarType.BFloat16;
        var quantization = dtypeName is "fp8" or "int8" ? WeightQuantizer.Parse(dtypeName) : WeightQuantization.None;
        if (quantization != WeightQuantization.None && layout != Flux2Layout.Bfl)
        {
            AnsiConsole.MarkupLine($"[red]error[/]: --dtype {dtypeName} writes the BFL layout only");
            return 1;
        }
        var specs = Flux2RandomCheckpoint.Specs(card.Transformer, layout, dtype);
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(card.Name)}[/]: transformer {specs.Count} tensors, {Flux2Specs.ParameterCount(card.Transformer):N0} parameters; VAE {Markup.Escape(card.Vae)}; text encoder {Markup.Escape(card.TextEncoder)}; {dtypeName}, layout {layoutName}, seed {seed}");
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>();
                Flux2RandomModel.Write(card, layout, outDir, dtype, seed, (component, done, total) =>
                {
                    if (!tasks.TryGetValue(component, out var task)) tasks[component] = task = ctx.AddTask(component, maxValue: Math.Max(1, total));
                    task.Value = done;
                }, quantization);
            });
        AnsiConsole.MarkupLine($"wrote [green]{Markup.Escape(Path.GetFullPath(outDir))}[/] (transformer, VAE, text encoder, tokenizer)");
        return 0;
    }

    /// <summary>Reports on the writing thread (Progress&lt;T&gt; would post to the thread pool, out of order).</summary>
    sealed class Inline(Action<long> report) : IProgress<long>
    {
        public void Report(long value) => report(value);
    }
}
