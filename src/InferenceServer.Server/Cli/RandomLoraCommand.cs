using System.CommandLine;
using InferenceServer.Models;
using InferenceServer.Models.Lora;
using InferenceServer.Models.Runtime;
using InferenceServer.Pipeline.Generation;
using static TorchSharp.torch;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server random-lora --model DIR --rank R [--seed S] [--targets all|attention] --format diffusers|bfl|kohya
/// [--dtype bf16|f32|f16] --out FILE</c>: a random adapter for the model folder's transformer (any family), in one of the
/// published layouts, for tests and measurements. The same seed gives the same adapter in every format (each reads back
/// to the same deltas). Prints the rank, the adapted linears and the file size. Bad input: exit code 2 and one line on stderr.
/// </summary>
internal static class RandomLoraCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model folder whose transformer the adapter is for (any family)", Required = true };
        var rank = new Option<int>("--rank") { Description = "Rank of every module (capped by the layer's sides)", Required = true };
        var seed = new Option<long>("--seed") { Description = "Random seed (same seed: same adapter in every format)", DefaultValueFactory = _ => 0 };
        var targets = new Option<string>("--targets") { Description = "all adaptable linears, or attention ones only", DefaultValueFactory = _ => "all" };
        targets.AcceptOnlyFromAmong("all", "attention");
        var format = new Option<string>("--format") { Description = "diffusers (PEFT), bfl (ai-toolkit / ComfyUI names) or kohya (musubi)", Required = true };
        format.AcceptOnlyFromAmong("diffusers", "bfl", "kohya");
        var dtype = new Option<string>("--dtype") { Description = "Stored dtype", DefaultValueFactory = _ => "bf16" };
        dtype.AcceptOnlyFromAmong("bf16", "f32", "f16");
        var outFile = new Option<string>("--out") { Description = "Output .safetensors file", Required = true };
        var command = new Command("random-lora", "Write a random LoRA adapter for a model folder's transformer (diffusers, BFL or kohya layout)")
            { model, rank, seed, targets, format, dtype, outFile };
        command.SetAction(r =>
        {
            return Run(r.GetValue(model)!, r.GetValue(rank), r.GetValue(seed), r.GetValue(targets) == "attention",
                LoraWriter.ParseFormat(r.GetValue(format)!), r.GetValue(dtype)!, r.GetValue(outFile)!, r.InvocationConfiguration.Output);
        });
        return command;
    }

    static int Run(string modelDir, int rank, long seed, bool attentionOnly, LoraFileFormat format, string dtypeName, string outFile, TextWriter output)
    {
        if (rank < 1) throw new ArgumentException($"--rank {rank}: must be at least 1");
        TorchRuntime.EnsureInitialized();
        var dtype = dtypeName switch { "f32" => ScalarType.Float32, "f16" => ScalarType.Float16, _ => ScalarType.BFloat16 };
        // The whole folder loads as the other verbs load it: the adapter's targets are the transformer's layers as the server sees them.
        using var backend = ModelFamilies.Load(modelDir, new ModelLoadOptions(ScalarType.BFloat16));
        var lora = backend.Lora.Targets;
        var layers = LoraWriter.Random(lora, rank, seed, attentionOnly);
        var ranks = layers.Select(l => l.Down.shape[0]).Distinct().Order().ToList();
        try
        {
            var dir = Path.GetDirectoryName(Path.GetFullPath(outFile));
            if (dir is not null) Directory.CreateDirectory(dir);
            LoraWriter.Write(outFile, lora, layers, format, dtype);
        }
        finally
        {
            foreach (var (_, down, up) in layers) { down.Dispose(); up.Dispose(); }
        }
        output.WriteLine($"{backend.CardName} ({backend.Family}): rank {string.Join("/", ranks)}, {layers.Count} of {lora.Layers.Count} adaptable linears, " +
            $"{format.ToString().ToLowerInvariant()} layout, {dtypeName}, seed {seed}");
        output.WriteLine($"wrote {Path.GetFullPath(outFile)} ({new FileInfo(outFile).Length:N0} bytes)");
        return 0;
    }
}
