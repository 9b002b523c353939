using System.Text.Json.Nodes;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// Writes a complete random-weight Z-Image folder for a card, streaming tensor by tensor: the released diffusers layout
/// (sharded <c>transformer/</c> + config.json, <c>vae/</c>, <c>text_encoder/</c>, <c>tokenizer/</c>, model_index.json) or
/// the single-file layout (one <c>z-image-*.safetensors</c> in the official/ComfyUI naming, <c>ae.safetensors</c>).
/// </summary>
public static class ZImageRandomModel
{
    /// <summary>Transformer shard size in the diffusers layout (the release has 3 shards of ~8 GB; ours are smaller).</summary>
    public const long TransformerShardBytes = 4L << 30;

    /// <param name="singleFile">False: diffusers layout; true: single-file layout.</param>
    /// <param name="progress">(component, bytes written, component total).</param>
    public static void Write(ZImageModelCard card, string outDir, ScalarType dtype, long seed, bool singleFile = false, Action<string, long, long>? progress = null)
    {
        Directory.CreateDirectory(outDir);
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["generator"] = $"inference-server random-checkpoint seed={seed}" };

        var tSpecs = ZImageSpecs.Transformer(card.Transformer, dtype);
        long tTotal = tSpecs.Sum(s => s.ByteLength);
        var tProgress = new Flux2RandomModel.Inline(b => progress?.Invoke("transformer", b, tTotal));
        if (singleFile)
        {
            // The official naming: fused qkv rows [q; k; v], out/q_norm/k_norm, x_embedder/final_layer (no prefix).
            var fused = SingleFileSpecs(tSpecs);
            SafetensorsWriter.Write(Path.Combine(outDir, card.Name + ".safetensors"), fused.Select(f => f.Spec).ToList(), s =>
            {
                var parts = fused.First(f => f.Spec.Name == s.Name).Parts;
                if (parts.Count == 1) return ZImageSpecs.RandomTensor(parts[0], seed);
                using var scope = NewDisposeScope();
                return cat(parts.Select(p => ZImageSpecs.RandomTensor(p, seed)).ToList(), 0).MoveToOuterDisposeScope();
            }, meta, tProgress);
        }
        else
        {
            string tDir = Path.Combine(outDir, "transformer");
            Directory.CreateDirectory(tDir);
            SafetensorsWriter.WriteSharded(tDir, "diffusion_pytorch_model", tSpecs, s => ZImageSpecs.RandomTensor(s, seed), TransformerShardBytes, meta, tProgress);
            Flux2RandomModel.WriteJson(Path.Combine(tDir, "config.json"), card.Transformer.ToDiffusersConfig());
        }

        var vaeConfig = ZImageVaeConfig.Load(Path.Combine(ModelCards.Directory, "vae", card.Vae + ".json"));
        var vSpecs = ZImageAutoencoder.Specs(vaeConfig, dtype);
        long vTotal = vSpecs.Sum(s => s.ByteLength);
        var vProgress = new Flux2RandomModel.Inline(b => progress?.Invoke("vae", b, vTotal));
        if (singleFile)
            SafetensorsWriter.Write(Path.Combine(outDir, ZImageModelFolder.AeFile), vSpecs, s => ZImageAutoencoder.RandomTensor(s, seed), meta, vProgress);
        else
        {
            string vDir = Path.Combine(outDir, "vae");
            Directory.CreateDirectory(vDir);
            SafetensorsWriter.Write(Path.Combine(vDir, "diffusion_pytorch_model.safetensors"), vSpecs, s => ZImageAutoencoder.RandomTensor(s, seed), meta, vProgress);
            Flux2RandomModel.WriteJson(Path.Combine(vDir, "config.json"), vaeConfig.ToDiffusersJson());
        }

        Flux2RandomModel.WriteTextEncoder(outDir, ModelCards.TextEncoder(card.TextEncoder), dtype, seed, meta, progress);
        Flux2RandomModel.CopyTokenizer(outDir);
        if (!singleFile)
            Flux2RandomModel.WriteJson(Path.Combine(outDir, "model_index.json"), new JsonObject
            {
                ["_class_name"] = "ZImagePipeline",
                ["_diffusers_version"] = "0.36.0.dev0",
                ["scheduler"] = new JsonArray("diffusers", "FlowMatchEulerDiscreteScheduler"),
                ["text_encoder"] = new JsonArray("transformers", "Qwen3Model"),
                ["tokenizer"] = new JsonArray("transformers", "Qwen2Tokenizer"),
                ["transformer"] = new JsonArray("diffusers", "ZImageTransformer2DModel"),
                ["vae"] = new JsonArray("diffusers", "AutoencoderKL"),
            });
        // The marker last: a folder that has it is complete.
        Flux2RandomModel.WriteJson(Path.Combine(outDir, ModelCards.MarkerFile), new JsonObject { ["model_card"] = card.Name, ["random_seed"] = seed, ["dtype"] = dtype.ToString() });
    }

    /// <summary>The single-file names of the diffusers specs, each with the diffusers tensors it is made of (rows concatenated).</summary>
    static List<(TensorSpec Spec, List<TensorSpec> Parts)> SingleFileSpecs(IReadOnlyList<TensorSpec> specs)
    {
        var byName = specs.ToDictionary(s => s.Name);
        var result = new List<(TensorSpec, List<TensorSpec>)>();
        foreach (var s in specs)
        {
            string n = s.Name;
            if (n.EndsWith(".attention.to_k.weight", StringComparison.Ordinal) || n.EndsWith(".attention.to_v.weight", StringComparison.Ordinal)) continue;
            if (n.EndsWith(".attention.to_q.weight", StringComparison.Ordinal))
            {
                string p = n[..^"to_q.weight".Length];
                var parts = new List<TensorSpec> { s, byName[p + "to_k.weight"], byName[p + "to_v.weight"] };
                result.Add((new TensorSpec(p + "qkv.weight", s.DType, [parts.Sum(x => x.Shape[0]), s.Shape[1]]), parts));
                continue;
            }
            string renamed = n.Replace(".attention.to_out.0.", ".attention.out.").Replace(".attention.norm_q.", ".attention.q_norm.")
                .Replace(".attention.norm_k.", ".attention.k_norm.").Replace("all_x_embedder.2-1.", "x_embedder.").Replace("all_final_layer.2-1.", "final_layer.");
            result.Add((s with { Name = renamed }, [s]));
        }
        return result;
    }
}
