using InferenceServer.Models.Quantization;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2;

/// <summary>Loads a FLUX.2 transformer checkpoint in either layout (BFL keys, or diffusers <c>Flux2Transformer2DModel</c>).</summary>
public static class Flux2Checkpoint
{
    /// <summary>The official single-file name of a variant, e.g. <c>flux-2-klein-4b.safetensors</c>.</summary>
    public static string BflFileName(string variant) => $"flux-2-{variant}.safetensors";

    /// <summary>True when the tensors use diffusers names.</summary>
    public static bool IsDiffusers(ITensorSource source) => source.TryGetEntry("x_embedder.weight", out _);

    /// <summary>The source under BFL names (a view when it is a diffusers checkpoint; disposing it disposes <paramref name="source"/>).</summary>
    public static ITensorSource AsBfl(ITensorSource source, Flux2Config config) => IsDiffusers(source) ? Flux2Diffusers.AsBfl(source, config) : source;

    /// <summary>Loads <paramref name="source"/> (either layout) into <paramref name="model"/>; strict by default.</summary>
    public static LoadReport Load(Flux2Transformer model, ITensorSource source, bool strict = true, ScalarType? dtype = null) =>
        StateDict.Load(model, AsBfl(source, model.Config), strict, dtype: dtype);

    /// <summary>Opens <paramref name="path"/> (file, index or folder, see <see cref="Checkpoint.Open"/>) and loads it.</summary>
    public static LoadReport Load(Flux2Transformer model, string path, bool strict = true, ScalarType? dtype = null)
    {
        using var source = Checkpoint.Open(path);
        return Load(model, source, strict, dtype);
    }

    /// <summary>
    /// Loads <paramref name="source"/> (either layout) into <paramref name="model"/> with 8-bit linear weights: a checkpoint
    /// that already holds 8-bit weights (official scaled-FP8 layout, or our int8 one, see <see cref="QuantizedCheckpoint"/>) keeps them as
    /// they are, whatever <paramref name="quantization"/> says; a float checkpoint is quantized layer by layer on load when
    /// <paramref name="quantization"/> is not None (the linears <see cref="Flux2Quantize.Select"/> picks). The matching Linears are swapped for
    /// <see cref="QuantizedLinear"/> first, so keys stay <c>X.weight</c> + <c>X.weight_scale</c>. Other tensors load as usual.
    /// </summary>
    /// <param name="device">Where a model built on the meta device gets its storage (default the CPU), after the 8-bit layers are swapped in.</param>
    public static LoadReport Load(Flux2Transformer model, ITensorSource source, WeightQuantization quantization, bool strict = true, ScalarType? dtype = null, Device? device = null)
    {
        var bfl = AsBfl(source, model.Config);
        if (quantization == WeightQuantization.None && !QuantizedCheckpoint.Holds8BitWeights(bfl))
            return StateDict.Load(MetaModules.Materialize(model, device ?? CPU), bfl, strict, dtype: dtype);
        var q = new QuantizedCheckpoint(bfl, quantization, Flux2Quantize.Select(quantization)); // not disposed: it would dispose the caller's source
        var shapes = model.named_modules().Where(m => m.module is TorchSharp.Modules.Linear).ToDictionary(m => m.name, m => ((TorchSharp.Modules.Linear)m.module).weight!.shape);
        foreach (var (path, spec) in q.Layers)
            if (!shapes.TryGetValue(path, out var shape) || !shape.SequenceEqual(spec.WeightShape))
            {
                if (strict) throw new InvalidDataException($"quantized weight '{path}.weight' {string.Join("x", spec.WeightShape)} matches no linear layer of the model" + (shape is null ? "" : $" (module: {string.Join("x", shape)})"));
            }
        WeightQuantizer.Swap(model, q.Layers.ContainsKey, (path, linear) =>
        {
            var spec = q.Layers[path];
            return new QuantizedLinear(spec.WeightShape[1], spec.WeightShape[0], spec.Format, spec.ScaleShape, linear.weight!.device);
        });
        return StateDict.Load(MetaModules.Materialize(model, device ?? CPU), q, strict, dtype: dtype);
    }
}
