using InferenceServer.Models.Flux2.Autoencoder;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>
/// Latents to tokens and back (BFL <c>AutoEncoder</c> 2x2 patchify, <c>prc_img</c>, <c>prc_txt</c>,
/// <c>encode_image_refs</c> ids, <c>scatter_ids</c>, <c>compress_time</c>). Ids are int64 (t, h, w, l).
/// </summary>
public static class Flux2Packing
{
    /// <summary>Time offset between reference images: reference k gets t = Scale * (k + 1).</summary>
    public const int ReferenceTimeScale = 10;

    /// <summary>BFL <c>prc_img</c>: [C, h, w] -> tokens [h*w, C] (row-major) and ids [h*w, 4] = (t, i, j, 0) (<see cref="LatentTokens.ToSequence"/> of one grid).</summary>
    public static (Tensor Tokens, Tensor Ids) PrcImg(Tensor x, long t = 0)
    {
        using var s = NewDisposeScope();
        var (tokens, ids) = LatentTokens.ToSequence(x.unsqueeze(0), t);
        return (tokens[0].MoveToOuterDisposeScope(), ids[0].MoveToOuterDisposeScope());
    }

    /// <summary>BFL <c>prc_txt</c>: [L, D] -> (the same tokens, ids [L, 4] = (t, 0, 0, l)).</summary>
    public static (Tensor Tokens, Tensor Ids) PrcTxt(Tensor x, long t = 0) => (x.alias(), Ids(x.device, [t], 1, 1, x.shape[0]));

    /// <summary><see cref="PrcImg"/> per batch element: [B, C, h, w] -> ([B, h*w, C], [B, h*w, 4]).</summary>
    public static (Tensor Tokens, Tensor Ids) BatchedPrcImg(Tensor x) => LatentTokens.ToSequence(x);

    /// <summary><see cref="PrcTxt"/> per batch element: [B, L, D] -> ([B, L, D], [B, L, 4]).</summary>
    public static (Tensor Tokens, Tensor Ids) BatchedPrcTxt(Tensor x) => Batched(x, e => PrcTxt(e));

    /// <summary>
    /// The token part of BFL <c>encode_image_refs</c>: reference latents [C, h_k, w_k] become one sequence
    /// [1, sum h_k w_k, C] with ids t = 10 (k + 1). Tokens keep the input dtype (BFL casts them to bfloat16).
    /// </summary>
    public static (Tensor Tokens, Tensor Ids) ReferenceTokens(IReadOnlyList<Tensor> references)
    {
        if (references.Count == 0) throw new ArgumentException("no reference latents", nameof(references));
        using var s = NewDisposeScope();
        var parts = references.Select((r, k) => PrcImg(r, ReferenceTimeScale * (k + 1L))).ToList();
        return (cat(parts.Select(p => p.Tokens).ToList(), 0).unsqueeze(0).MoveToOuterDisposeScope(),
                cat(parts.Select(p => p.Ids).ToList(), 0).unsqueeze(0).MoveToOuterDisposeScope());
    }

    /// <summary>BFL <c>compress_time</c>: each t id replaced by its rank among the sorted distinct ids ([N] int64).</summary>
    public static Tensor CompressTime(Tensor tIds)
    {
        if (tIds.dim() != 1) throw new ArgumentException($"t ids must be 1-D, got [{string.Join(", ", tIds.shape)}]", nameof(tIds));
        using var s = NewDisposeScope();
        var (unique, _, _) = tIds.unique(sorted: true);
        var remap = zeros(tIds.max().item<long>() + 1, tIds.dtype, tIds.device);
        remap.index_put_(arange(unique.shape[0], tIds.dtype, tIds.device), [unique]);
        return remap[tIds].MoveToOuterDisposeScope();
    }

    /// <summary>
    /// BFL <c>scatter_ids</c>: puts each batch element's tokens [L, C] where their ids say, one [1, C, T, H, W] grid per
    /// element (T = distinct t ids compressed, H/W = max id + 1; cells without a token are 0).
    /// </summary>
    public static List<Tensor> ScatterIds(Tensor x, Tensor ids)
    {
        if (x.dim() != 3 || ids.dim() != 3 || ids.shape[0] != x.shape[0] || ids.shape[1] != x.shape[1])
            throw new ArgumentException($"tokens [{string.Join(", ", x.shape)}] and ids [{string.Join(", ", ids.shape)}] must be [B, L, C] and [B, L, 4]");
        var result = new List<Tensor>();
        for (long b = 0; b < x.shape[0]; b++)
        {
            using var s = NewDisposeScope();
            var data = x[b];                                         // [L, C]
            var pos = ids[b].to(ScalarType.Int64, data.device);      // [L, 4], on the tokens' device (ids may come from the host)
            var tc = CompressTime(pos[.., 0]);
            var (hIds, wIds) = (pos[.., 1], pos[.., 2]);
            long t = tc.max().item<long>() + 1, h = hIds.max().item<long>() + 1, w = wIds.max().item<long>() + 1;
            var flat = tc * (w * h) + hIds * w + wIds;               // [L]
            long ch = data.shape[1];
            var outp = zeros([t * h * w, ch], data.dtype, data.device);
            outp.scatter_(0, flat.unsqueeze(1).expand(-1, ch), data);
            result.Add(outp.view(t, h, w, ch).permute(3, 0, 1, 2).unsqueeze(0).contiguous().MoveToOuterDisposeScope()); // [1, C, T, H, W]
        }
        return result;
    }

    /// <summary>The image grid of a denoised sequence as BFL's cli.py does it: <c>cat(scatter_ids(x, ids)).squeeze(2)</c> -> [B, C, H, W].</summary>
    public static Tensor Unpack(Tensor x, Tensor ids)
    {
        using var s = NewDisposeScope();
        return cat(ScatterIds(x, ids), 0).squeeze(2).MoveToOuterDisposeScope();
    }

    static Tensor Ids(Device device, long[] t, long h, long w, long l)
    {
        using var s = NewDisposeScope();
        var ids = cartesian_prod([tensor(t, device: device), arange(h, ScalarType.Int64, device), arange(w, ScalarType.Int64, device), arange(l, ScalarType.Int64, device)]);
        return ids.view(-1, 4).MoveToOuterDisposeScope(); // [t*h*w*l, 4]
    }

    static (Tensor, Tensor) Batched(Tensor x, Func<Tensor, (Tensor, Tensor)> fn)
    {
        using var s = NewDisposeScope();
        var r = Enumerable.Range(0, (int)x.shape[0]).Select(i => fn(x[i])).ToList();
        return (stack(r.Select(p => p.Item1).ToList()).MoveToOuterDisposeScope(), stack(r.Select(p => p.Item2).ToList()).MoveToOuterDisposeScope());
    }
}
