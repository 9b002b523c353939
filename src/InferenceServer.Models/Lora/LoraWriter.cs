using System.Text.Json;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Lora;

/// <summary>The file layouts <see cref="LoraWriter"/> writes (the ones trainers publish).</summary>
public enum LoraFileFormat
{
    /// <summary>diffusers/PEFT: <c>transformer.&lt;diffusers module&gt;.lora_A/lora_B.weight</c>, alpha in <c>lora_adapter_metadata</c>.</summary>
    Diffusers,
    /// <summary>ai-toolkit / BFL names: <c>diffusion_model.&lt;module&gt;.lora_A/lora_B.weight</c>, no alpha.</summary>
    Bfl,
    /// <summary>kohya/musubi: <c>lora_unet_&lt;module, '.' -&gt; '_'&gt;.lora_down/lora_up.weight</c> + <c>.alpha</c>.</summary>
    Kohya,
}

/// <summary>
/// Writes test adapters for a loaded model: one random low-rank delta per adaptable linear, in any of the published
/// layouts. The same seed gives the same delta whatever the layout, and each layout reads back to bit-identical deltas:
/// diffusers splits fused layers into their diffusers modules (each with a copy of lora_A, as ai-toolkit's converter
/// does), kohya stores <c>alpha = rank / 2</c> with lora_up doubled (a power of two: exact in any float dtype).
/// </summary>
public static class LoraWriter
{
    public static LoraFileFormat ParseFormat(string text) => text.ToLowerInvariant() switch
    {
        "diffusers" or "peft" => LoraFileFormat.Diffusers,
        "bfl" or "ai-toolkit" or "comfyui" => LoraFileFormat.Bfl,
        "kohya" or "musubi" => LoraFileFormat.Kohya,
        _ => throw new ArgumentException($"unknown LoRA format '{text}' (diffusers, bfl or kohya)", nameof(text)),
    };

    /// <summary>
    /// Random deltas (float32, CPU) for every adaptable linear, or only attention ones (paths with <c>attn</c> or
    /// <c>attention</c>): Down ~ N(0, 1/in), Up ~ N(0, 1/rank) scaled by <paramref name="strength"/>, from one generator seeded with <paramref name="seed"/>, in model order.
    /// </summary>
    public static IReadOnlyList<(string Path, Tensor Down, Tensor Up)> Random(LoraTargets targets, int rank, long seed, bool attentionOnly = false, double strength = 0.5)
    {
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, "rank must be at least 1");
        using var gen = new Generator((ulong)seed);
        var result = new List<(string, Tensor, Tensor)>();
        foreach (var (path, shape) in targets.Layers)
        {
            if (attentionOnly && !path.Contains("attn", StringComparison.Ordinal) && !path.Contains("attention", StringComparison.Ordinal)) continue;
            int r = (int)Math.Min(rank, Math.Min(shape.In, shape.Out));
            var down = randn([r, shape.In], ScalarType.Float32, generator: gen).div_(Math.Sqrt(shape.In));
            var up = randn([shape.Out, r], ScalarType.Float32, generator: gen).mul_(strength / Math.Sqrt(r));
            result.Add((path, down.DetachFromDisposeScope(), up.DetachFromDisposeScope()));
        }
        if (result.Count == 0) throw new ArgumentException("no layer of the model matches the targets", nameof(attentionOnly));
        return result;
    }

    /// <summary>Writes <paramref name="layers"/> (model path, Down [r, in], Up [out, r]; factor 1) as <paramref name="format"/> in <paramref name="dtype"/>.</summary>
    public static void Write(string path, LoraTargets targets, IReadOnlyList<(string Path, Tensor Down, Tensor Up)> layers, LoraFileFormat format, ScalarType dtype = ScalarType.BFloat16)
    {
        using var scope = NewDisposeScope();
        var tensors = new List<(string, Tensor)>();
        Dictionary<string, string>? metadata = null;
        switch (format)
        {
            case LoraFileFormat.Bfl:
                foreach (var (p, down, up) in layers)
                {
                    string key = LoraTargets.Key(p, LoraScheme.Native, LoraKeyStyle.Peft);
                    tensors.Add((key + ".lora_A.weight", down.to(dtype)));
                    tensors.Add((key + ".lora_B.weight", up.to(dtype)));
                }
                break;
            case LoraFileFormat.Kohya:
                foreach (var (p, down, up) in layers)
                {
                    string key = LoraTargets.Key(p, LoraScheme.Native, LoraKeyStyle.Kohya);
                    tensors.Add((key + ".lora_down.weight", down.to(dtype)));
                    tensors.Add((key + ".lora_up.weight", (up * 2).to(dtype)));
                    tensors.Add((key + ".alpha", tensor(down.shape[0] / 2.0).to(dtype)));
                }
                break;
            case LoraFileFormat.Diffusers:
                // Each diffusers module gathers its rows of the model's layers (several modules per fused layer, swapped halves).
                var modules = new Dictionary<string, List<(LoraPiece Piece, Tensor Down, Tensor Up)>>(StringComparer.Ordinal);
                foreach (var (p, down, up) in layers)
                    foreach (var alias in targets.Naming.Aliases(p, targets.Layers[p].Out).Where(a => a.Scheme == LoraScheme.Diffusers))
                    {
                        if (!modules.TryGetValue(alias.Module, out var list)) modules[alias.Module] = list = [];
                        list.Add((alias.Piece, down, up));
                    }
                int rank = 0;
                foreach (var (module, pieces) in modules)
                {
                    var down = pieces[0].Down;
                    rank = (int)down.shape[0];
                    var b = zeros(pieces.Sum(x => x.Piece.Rows), down.shape[0]);
                    foreach (var (piece, _, up) in pieces) b.narrow(0, piece.SrcRow, piece.Rows).copy_(up.narrow(0, piece.DstRow, piece.Rows));
                    string key = LoraTargets.Key(module, LoraScheme.Diffusers, LoraKeyStyle.Peft);
                    tensors.Add((key + ".lora_A.weight", down.to(dtype)));
                    tensors.Add((key + ".lora_B.weight", b.to(dtype)));
                }
                var ranks = layers.Select(l => l.Down.shape[0]).Distinct().ToList();
                var config = new Dictionary<string, object>
                {
                    ["transformer.r"] = rank, ["transformer.lora_alpha"] = rank,
                    ["transformer.alpha_pattern"] = ranks.Count == 1 ? new Dictionary<string, long>()
                        : modules.ToDictionary(m => m.Key, m => m.Value[0].Down.shape[0]),
                    ["transformer.target_modules"] = modules.Keys.ToList(),
                };
                metadata = new() { ["format"] = "pt", ["lora_adapter_metadata"] = JsonSerializer.Serialize(config) };
                break;
        }
        SafetensorsWriter.Write(path, tensors, metadata);
    }
}
