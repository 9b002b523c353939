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
}
