using InferenceServer.Models.Lora;

namespace InferenceServer.Models.Flux2;

/// <summary>
/// FLUX.2 adapter names: every linear of the transformer takes adapters. Native names are the BFL module paths (ours;
/// ai-toolkit/ComfyUI <c>diffusion_model.</c>, kohya/musubi <c>lora_unet_</c>); diffusers names come from the one
/// BFL &lt;-&gt; diffusers mapping (<see cref="Flux2Diffusers.Parts"/>): <c>to_q/to_k/to_v</c> are row blocks of the fused
/// <c>qkv</c>, and <c>norm_out.linear</c> holds <c>final_layer.adaLN_modulation.1</c> with its two row halves swapped.
/// </summary>
public sealed class Flux2LoraNaming : ILoraNaming
{
    public static Flux2LoraNaming Instance { get; } = new();

    public bool Adaptable(string path) => true;

    public IEnumerable<LoraAlias> Aliases(string path, long outRows)
    {
        yield return new LoraAlias(path, LoraScheme.Native, new LoraPiece(path, 0, 0, outRows));
        foreach (var part in Flux2Diffusers.Parts(path + ".weight", outRows))
            yield return new LoraAlias(part.Name[..^".weight".Length], LoraScheme.Diffusers,
                new LoraPiece(path, part.DiffusersStart, part.BflStart, part.Count));
    }
}
