using InferenceServer.Models.Lora;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// Z-Image adapter names. Our module paths are the official = diffusers names (PEFT <c>transformer.</c>, ai-toolkit
/// <c>diffusion_model.</c>, musubi <c>lora_unet_</c>). ComfyUI's internal model fuses <c>attention.qkv</c> (rows [q | k | v]
/// onto our to_q/to_k/to_v) and renames <c>attention.out</c>, <c>x_embedder</c> and <c>final_layer.*</c>; its trainer and
/// musubi's converter write those names. <c>cap_embedder.1</c> takes no adapter: it runs on every caption of the batch
/// flattened into one sequence, so its input rows are not the batch rows.
/// </summary>
public sealed class ZImageLoraNaming : ILoraNaming
{
    public static ZImageLoraNaming Instance { get; } = new();

    public bool Adaptable(string path) => !path.StartsWith("cap_embedder.", StringComparison.Ordinal);

    public IEnumerable<LoraAlias> Aliases(string path, long outRows)
    {
        var whole = new LoraPiece(path, 0, 0, outRows);
        yield return new LoraAlias(path, LoraScheme.Native, whole);
        yield return new LoraAlias(path, LoraScheme.Diffusers, whole);
        foreach (var (suffix, block) in new[] { (".attention.to_q", 0), (".attention.to_k", 1), (".attention.to_v", 2) })
            if (path.EndsWith(suffix, StringComparison.Ordinal))
                yield return new LoraAlias(path[..^suffix.Length] + ".attention.qkv", LoraScheme.Native, new LoraPiece(path, block * outRows, 0, outRows));
        string? comfy = path switch
        {
            _ when path.EndsWith(".attention.to_out.0", StringComparison.Ordinal) => path[..^".to_out.0".Length] + ".out",
            "all_x_embedder.2-1" => "x_embedder",
            _ when path.StartsWith("all_final_layer.2-1.", StringComparison.Ordinal) => "final_layer." + path["all_final_layer.2-1.".Length..],
            _ => null,
        };
        if (comfy is not null) yield return new LoraAlias(comfy, LoraScheme.Native, whole);
    }
}
