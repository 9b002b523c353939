using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2.Autoencoder;

/// <summary>
/// The token grid <c>[B, C, h, w]</c> as the transformer's sequence and back (BFL <c>prc_img</c> / <c>scatter_ids</c>
/// for one time coordinate): <c>seq[b, i*w + j, :] = grid[b, :, i, j]</c>, position ids <c>(t, i, j, 0)</c>.
/// </summary>
public static class LatentTokens
{
    /// <summary>
    /// BFL AE patchify: <c>tok[b, c*pi*pj + pj*a + b', i, j] = z[b, c, pi*i + a, pj*j + b']</c> (einops
    /// <c>c (i pi) (j pj) -> (c pi pj) i j</c>): [B, C, H, W] -> [B, C*pi*pj, H/pi, W/pj].
    /// </summary>
    public static Tensor Patchify(Tensor z, int pi = 2, int pj = 2)
    {
        if (z.dim() != 4 || z.shape[2] % pi != 0 || z.shape[3] % pj != 0)
            throw new ArgumentException($"latent [{string.Join(", ", z.shape)}] needs height divisible by {pi} and width by {pj}", nameof(z));
        long b = z.shape[0], c = z.shape[1], h = z.shape[2] / pi, w = z.shape[3] / pj;
        using var v = z.view(b, c, h, pi, w, pj);                            // [B, c, i, pi, j, pj]
        using var p = v.permute(0, 1, 3, 5, 2, 4);                           // [B, c, pi, pj, i, j]
        return p.reshape(b, c * pi * pj, h, w);                              // [B, c*pi*pj, i, j]
    }

    /// <summary>Inverse of <see cref="Patchify"/>: [B, C*pi*pj, h, w] -> [B, C, pi*h, pj*w].</summary>
    public static Tensor Unpatchify(Tensor tok, int pi = 2, int pj = 2)
    {
        long b = tok.shape[0], c = tok.shape[1] / (pi * pj), h = tok.shape[2], w = tok.shape[3];
        using var v = tok.view(b, c, pi, pj, h, w);                          // [B, c, pi, pj, i, j]
        using var p = v.permute(0, 1, 4, 2, 5, 3);                           // [B, c, i, pi, j, pj]
        return p.reshape(b, c, h * pi, w * pj);                              // [B, c, 2h, 2w]
    }

    /// <summary>Grid <c>[B, C, h, w]</c> -> tokens <c>[B, h*w, C]</c> (row-major) and int64 ids <c>[B, h*w, 4]</c> = (t, i, j, 0).</summary>
    public static (Tensor Tokens, Tensor Ids) ToSequence(Tensor grid, long t = 0)
    {
        if (grid.dim() != 4 || grid.shape[0] == 0) throw new ArgumentException($"grid: expected [B>0, C, h, w], got [{string.Join(", ", grid.shape)}]", nameof(grid));
        long b = grid.shape[0], c = grid.shape[1], h = grid.shape[2], w = grid.shape[3];
        using var flat = grid.reshape(b, c, h * w);                          // [B, C, h*w]
        using var tr = flat.transpose(1, 2);                                 // [B, h*w, C]
        return (tr.contiguous(), Ids(b, h, w, t, grid.device));
    }

    /// <summary>Position ids <c>[B, h*w, 4]</c>, int64: <c>(t, i, j, 0)</c> for token <c>i*w + j</c>.</summary>
    public static Tensor Ids(long batch, long h, long w, long t = 0, Device? device = null)
    {
        using var scope = NewDisposeScope();
        var i = arange(h, ScalarType.Int64, device).view(h, 1).expand(h, w); // [h, w]
        var j = arange(w, ScalarType.Int64, device).view(1, w).expand(h, w); // [h, w]
        var ids = stack([full([h, w], t, ScalarType.Int64, device), i, j, zeros([h, w], ScalarType.Int64, device)], 2); // [h, w, 4]
        return ids.view(1, h * w, 4).expand(batch, h * w, 4).contiguous().MoveToOuterDisposeScope(); // [B, h*w, 4]
    }

    /// <summary>
    /// BFL <c>scatter_ids</c> + <c>squeeze(2)</c> for one time coordinate: tokens <c>[B, L, C]</c> placed at their ids'
    /// (i, j) into a grid <c>[B, C, max i + 1, max j + 1]</c>; positions no token names stay zero.
    /// </summary>
    public static Tensor FromSequence(Tensor tokens, Tensor ids)
    {
        if (tokens.dim() != 3 || tokens.shape[0] == 0 || tokens.shape[1] == 0)
            throw new ArgumentException($"tokens: expected [B>0, L>0, C], got [{string.Join(", ", tokens.shape)}]", nameof(tokens));
        if (ids.dim() != 3 || ids.shape[0] != tokens.shape[0] || ids.shape[1] != tokens.shape[1] || ids.shape[2] != 4)
            throw new ArgumentException($"ids: expected [{tokens.shape[0]}, {tokens.shape[1]}, 4], got [{string.Join(", ", ids.shape)}]", nameof(ids));
        using var scope = NewDisposeScope();
        var ij = ids.to(ScalarType.Int64, tokens.device);
        var t = ij.select(2, 0);
        if (t.min().item<long>() != t.max().item<long>())
            throw new ArgumentException("ids: tokens of more than one time coordinate; scatter each image separately", nameof(ids));
        var i = ij.select(2, 1);                                             // [B, L]
        var j = ij.select(2, 2);                                             // [B, L]
        long b = tokens.shape[0], c = tokens.shape[2], h = i.max().item<long>() + 1, w = j.max().item<long>() + 1;
        var flat = (i * w + j).unsqueeze(2).expand(b, tokens.shape[1], c);  // [B, L, C]
        var grid = zeros([b, h * w, c], tokens.dtype, tokens.device).scatter_(1, flat, tokens); // [B, h*w, C]
        return grid.transpose(1, 2).reshape(b, c, h, w).MoveToOuterDisposeScope(); // [B, C, h, w]
    }
}
