using System.CommandLine;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Runtime;
using InferenceServer.Models.Weights;
using Spectre.Console;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server quantize --to fp8|int8 IN OUT</c>: writes the transformer with 8-bit linear weights, streamed tensor
/// by tensor (one weight in memory at a time). IN a model folder: OUT becomes the same folder with the transformer
/// quantized (BFL: <c>flux-2-NAME-fp8.safetensors</c>; diffusers: <c>transformer/diffusion_pytorch_model.safetensors</c>)
/// and everything else copied. IN a transformer checkpoint with BFL keys (file, index or folder): OUT is one file.
/// fp8 = the official scaled-FP8 layout (E4M3 + float32 per-tensor <c>weight_scale</c>); int8 = int8 + float32
/// per-output-channel <c>weight_scale</c>. Loading the result needs no option: 8-bit weights are detected.
/// </summary>
internal static class QuantizeCommand
{
    public static Command Create()
    {
        var to = new Option<string>("--to") { Description = "Weight format: fp8 (E4M3, per-tensor scale) or int8 (per-output-channel scale)", Required = true };
        to.AcceptOnlyFromAmong("fp8", "int8");
        var input = new Argument<string>("in") { Description = "A model folder, or a transformer checkpoint with BFL keys (.safetensors, index or folder)" };
        var output = new Argument<string>("out") { Description = "Output folder (for a model folder) or .safetensors file" };
        var command = new Command("quantize", "Quantize a FLUX.2 transformer to 8-bit weights (fp8 or int8), streaming tensor by tensor") { to, input, output };
        command.SetAction(r => Run(r.GetValue(to)!, r.GetValue(input)!, r.GetValue(output)!));
        return command;
    }

    static int Run(string toName, string input, string output)
    {
        TorchRuntime.EnsureInitialized();
        var to = WeightQuantizer.Parse(toName);
        bool folder = IsModelFolder(input);
        AnsiConsole.MarkupLine($"[bold]quantize[/] {Markup.Escape(Path.GetFullPath(input))} -> {Markup.Escape(Path.GetFullPath(output))}: transformer to {toName}{(folder ? " (model folder)" : "")}");
        string written = "";
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                ProgressTask? task = null;
                void Report(long done, long total)
                {
                    task ??= ctx.AddTask("transformer", maxValue: Math.Max(1, total));
                    task.Value = done;
                }
                if (folder) written = Flux2Quantize.WriteFolder(input, output, to, (_, done, total) => Report(done, total));
                else
                {
                    using var source = Checkpoint.Open(input);
                    if (Flux2Checkpoint.IsDiffusers(source))
                        throw new InvalidDataException($"{input}: diffusers tensor names; quantize the whole model folder instead (its card gives the key mapping)");
                    long total = Flux2Quantize.OutputBytes(source, to);
                    Flux2Quantize.WriteTransformer(source, output, to, new Inline(done => Report(done, total)),
                        new Dictionary<string, string> { ["generator"] = $"inference-server quantize --to {toName}" });
                    written = Path.GetFullPath(output);
                }
            });
        AnsiConsole.MarkupLine($"wrote [green]{Markup.Escape(written)}[/] ({new FileInfo(written).Length / 1e6:N1} MB)");
        return 0;
    }

    /// <summary>A complete model folder (transformer plus text encoder), as opposed to a transformer checkpoint.</summary>
    static bool IsModelFolder(string path)
    {
        if (!Directory.Exists(path) || !Directory.Exists(Path.Combine(path, "text_encoder"))) return false;
        try { Flux2ModelFolder.DetectLayout(path); return true; }
        catch (FileNotFoundException) { return false; }
    }

    /// <summary>Reports on the writing thread (Progress&lt;T&gt; would post to the thread pool, out of order).</summary>
    sealed class Inline(Action<long> report) : IProgress<long>
    {
        public void Report(long value) => report(value);
    }
}
