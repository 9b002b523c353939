namespace InferenceServer.Models.Lora;

/// <summary>
/// Rows <c>[SrcRow, SrcRow + Rows)</c> of an adapter module's <c>B @ A</c> add into rows <c>[DstRow, DstRow + Rows)</c> of the
/// weight of the model's linear <paramref name="Target"/> (its module path, e.g. <c>double_blocks.0.img_attn.qkv</c>).
/// A split module (diffusers <c>to_q</c>) covers a row block of a fused layer; a fused module (ComfyUI <c>attention.qkv</c>)
/// spreads over several layers; a swapped layout (diffusers <c>norm_out.linear</c>) is two pieces.
/// </summary>
public sealed record LoraPiece(string Target, long SrcRow, long DstRow, long Rows);

/// <summary>Which key prefixes reach a module name (see <see cref="LoraTargets"/>).</summary>
public enum LoraScheme
{
    /// <summary>The family's own checkpoint names (BFL for FLUX.2, official/ComfyUI for Z-Image): <c>diffusion_model.</c>, <c>base_model.model.</c>, kohya <c>lora_unet_</c> (dots to underscores), or bare.</summary>
    Native,
    /// <summary>diffusers module names: <c>transformer.</c>.</summary>
    Diffusers,
}

/// <summary>One name under which adapters publish (part of) a linear of the model.</summary>
public sealed record LoraAlias(string Module, LoraScheme Scheme, LoraPiece Piece);

/// <summary>
/// A family's adapter names: which of its linears take adapters, and every module name published adapters use for each
/// (one implementation per family, next to its transformer).
/// </summary>
public interface ILoraNaming
{
    /// <summary>Whether the linear at <paramref name="path"/> can carry an adapter (its input rows are the batch rows).</summary>
    bool Adaptable(string path);

    /// <summary>The names of the linear at <paramref name="path"/> ([<paramref name="outRows"/>, in]) and the rows each covers.</summary>
    IEnumerable<LoraAlias> Aliases(string path, long outRows);
}
