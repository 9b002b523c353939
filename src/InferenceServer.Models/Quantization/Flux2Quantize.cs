using System.Text.Json.Nodes;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;
using InferenceServer.Models.Files;

namespace InferenceServer.Models.Quantization;

/// <summary>
/// Offline quantization of a FLUX.2 transformer: streams tensor by tensor (one weight in memory at a time) into one
/// safetensors file with BFL keys, every linear weight as FP8 E4M3 codes + a float32 per-tensor <c>weight_scale</c>
/// (the official scaled-FP8 layout, with ComfyUI's <c>_quantization_metadata</c> header entry) or int8 + a float32
/// per-output-channel <c>weight_scale</c>; norm scales stay as stored.
/// </summary>
public static class Flux2Quantize
{
    /// <summary>The header metadata key ComfyUI reads the per-layer formats from.</summary>
    public const string MetadataKey = "_quantization_metadata";

    /// <summary>
    /// Which transformer linears a quantization covers. int8 (per-channel scales): every linear. FP8 (per-tensor scale):
    /// every linear except the image tokens' input and output projections, <c>img_in</c> and <c>final_layer.linear</c>
    /// (0.02% of klein-4B's weights), which stay in the activation dtype: on the random tiny model they alone take the
    /// DiT output cosine from 0.9989 to 0.9993-0.9996 (vLLM-omni's FLUX.2-klein FP8 keeps its x_embedder / proj_out in BF16 too).
    /// </summary>
    public static Func<string, bool> Select(WeightQuantization q) => q == WeightQuantization.Fp8
        ? path => path != "img_in" && path != "final_layer.linear"
        : _ => true;

    /// <summary>What the output holds: (specs in write order, producer). <paramref name="source"/> must use BFL keys.</summary>
    public static IReadOnlyList<TensorSpec> Specs(QuantizedCheckpoint source) =>
        source.Entries.Select(e => new TensorSpec(e.Name, e.DType, e.Shape)).ToList();

    /// <summary>Writes <paramref name="source"/> (BFL keys, float) quantized to <paramref name="to"/> into <paramref name="outFile"/>.</summary>
    public static void WriteTransformer(ITensorSource source, string outFile, WeightQuantization to, IProgress<long>? bytesWritten = null,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (to == WeightQuantization.None) throw new ArgumentException("choose fp8 or int8", nameof(to));
        var q = new QuantizedCheckpoint(new NonDisposingSource(source), to, Select(to));
        if (q.IsPrequantized) throw new InvalidDataException("the checkpoint already holds 8-bit weights");
        var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>()) { ["format"] = "pt" };
        var layers = new JsonObject();
        foreach (var (path, spec) in q.Layers)
            layers[path] = spec.Format == QuantizedFormat.Int8
                ? new JsonObject { ["format"] = "int8_per_channel" } // ours: int8 [out, in] + float32 scale [out]
                : new JsonObject { ["format"] = "float8_e4m3fn" };
        meta[MetadataKey] = new JsonObject { ["format_version"] = "1.0", ["layers"] = layers }.ToJsonString();
        var dir = Path.GetDirectoryName(Path.GetFullPath(outFile));
        if (dir is not null) Directory.CreateDirectory(dir);
        SafetensorsWriter.Write(outFile, Specs(q), s => q.Load(s.Name), meta, bytesWritten);
    }

    /// <summary>Total data bytes the quantized file will hold.</summary>
    public static long OutputBytes(ITensorSource source, WeightQuantization to) =>
        Specs(new QuantizedCheckpoint(new NonDisposingSource(source), to, Select(to))).Sum(s => s.ByteLength);

    /// <summary>
    /// Quantizes a model folder: <paramref name="outDir"/> gets the same layout with the transformer as one quantized
    /// BFL-key file (BFL: <c>flux-2-NAME-fp8.safetensors</c> / <c>-int8</c>; diffusers: <c>transformer/diffusion_pytorch_model.safetensors</c>
    /// plus its config.json) and every other file copied. <paramref name="progress"/> gets (component, bytes, total).
    /// </summary>
    public static string WriteFolder(string inDir, string outDir, WeightQuantization to, Action<string, long, long>? progress = null)
    {
        inDir = Path.GetFullPath(inDir);
        outDir = Path.GetFullPath(outDir);
        if (inDir == outDir) throw new ArgumentException("the output folder must differ from the input folder");
        var layout = Flux2ModelFolder.DetectLayout(inDir);
        var card = Flux2ModelFolder.DetectCard(inDir);
        string tPath = Flux2ModelFolder.TransformerPath(inDir, layout);
        string suffix = to == WeightQuantization.Fp8 ? "fp8" : "int8";
        string outT = layout == Flux2Layout.Bfl
            ? Path.Combine(outDir, Path.GetFileNameWithoutExtension(tPath) + "-" + suffix + ".safetensors")
            : Path.Combine(outDir, "transformer", Flux2RandomCheckpoint.DiffusersBaseName + ".safetensors");

        Directory.CreateDirectory(outDir);
        // Everything but the transformer, as it is, each file complete or absent; the marker after the transformer, so an
        // output folder that has it is complete.
        string marker = Path.Combine(inDir, Flux2ModelFolder.MarkerFile);
        foreach (var file in Directory.EnumerateFiles(inDir, "*", SearchOption.AllDirectories))
        {
            string rel = Path.GetRelativePath(inDir, file);
            if (file == marker) continue;
            bool isTransformer = layout == Flux2Layout.Bfl ? file == tPath : rel.StartsWith("transformer" + Path.DirectorySeparatorChar, StringComparison.Ordinal) && rel != Path.Combine("transformer", "config.json");
            if (isTransformer) continue;
            string dst = Path.Combine(outDir, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(dst)!);
            AtomicFile.Copy(file, dst);
        }
        using var source = Checkpoint.Open(tPath);
        using var bfl = Flux2Checkpoint.AsBfl(new NonDisposingSource(source), card.Transformer);
        long total = OutputBytes(bfl, to);
        WriteTransformer(bfl, outT, to, new Inline(b => progress?.Invoke("transformer", b, total)),
            new Dictionary<string, string> { ["generator"] = $"inference-server quantize --to {suffix}" });
        if (File.Exists(marker)) AtomicFile.Copy(marker, Path.Combine(outDir, Flux2ModelFolder.MarkerFile));
        return outT;
    }

    sealed class Inline(Action<long> report) : IProgress<long>
    {
        public void Report(long value) => report(value);
    }
}
