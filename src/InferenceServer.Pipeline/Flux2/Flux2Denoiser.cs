using InferenceServer.Models.Flux2;
using InferenceServer.Models.Runtime;
using InferenceServer.Pipeline.Generation;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>
/// FLUX.2 conditioned on a batch of rows (BFL <c>denoise</c> / <c>denoise_cfg</c> step body): reference tokens appended after
/// the image tokens, only the image tokens' prediction kept. Distilled: one call per step, guidance embedded when the model
/// has it. CFG: <c>ctx</c> is [uncond; cond] (2R rows), pred = u + guidance (c - u). The inputs are moved to the model's
/// device once, here (host tensors through pinned memory, without blocking), and owned by the denoiser.
/// </summary>
public sealed class Flux2Denoiser : IDenoiser
{
    readonly Flux2Transformer model;
    readonly bool cfg;
    readonly float guidance;
    readonly List<Tensor> owned = [];
    Tensor imgIds, ctx, ctxIds;
    Tensor? refTokens, refIds;

    /// <param name="imgIds">[R or 1, L_img, 4]</param>
    /// <param name="ctx">[R, Lt, D] (CFG: [2R, Lt, D] = [uncond; cond])</param>
    /// <param name="ctxIds">[R or 2R, Lt, 4]</param>
    /// <param name="refTokens">[R or 1, L_ref, C] or null.</param>
    /// <param name="refIds">[R or 1, L_ref, 4] or null.</param>
    public Flux2Denoiser(Flux2Transformer model, bool cfg, float guidance, Tensor imgIds, Tensor ctx, Tensor ctxIds, Tensor? refTokens = null, Tensor? refIds = null)
    {
        if ((refTokens is null) != (refIds is null)) throw new ArgumentException("reference tokens and reference ids come together (both or neither)");
        if (refTokens is not null && (refTokens.dim() != 3 || refIds!.dim() != 3 || refTokens.shape[1] != refIds.shape[1]))
            throw new ArgumentException($"reference tokens [{string.Join(", ", refTokens.shape)}] and ids [{string.Join(", ", refIds!.shape)}] must be [B, L_ref, C] and [B, L_ref, 4]");
        (this.model, this.cfg, this.guidance) = (model, cfg, guidance);
        this.imgIds = Own(imgIds)!;
        this.ctx = Own(ctx)!;
        this.ctxIds = Own(ctxIds)!;
        this.refTokens = Own(refTokens);
        this.refIds = Own(refIds);
    }

    Tensor? Own(Tensor? t)
    {
        if (t is null) return null;
        var u = ComputeDevice.Upload(t, model.Device);
        if (ReferenceEquals(u, t) || u.Handle == t.Handle) u = t.alias();
        owned.Add(u.DetachFromDisposeScope());                             // the denoiser owns its inputs until Dispose
        return u;
    }

    public Tensor Velocity(Tensor x, float sigma, int step)
    {
        long rows = x.shape[0];
        if (ctx.shape[0] != (cfg ? 2 * rows : rows))
            throw new ArgumentException($"x has {rows} rows, the text features [{string.Join(", ", ctx.shape)}] must hold {(cfg ? "[uncond; cond] for them" : "one row each")}", nameof(x));
        using var scope = NewDisposeScope();
        var ids = imgIds.shape[0] == rows ? imgIds : imgIds.expand(rows, -1, -1);
        return FlowSampler.Velocity(model, cfg, x, ids, ctx, ctxIds, sigma, guidance, refTokens, refIds).MoveToOuterDisposeScope();
    }

    public void KeepRows(Tensor rows)
    {
        Tensor Select(Tensor t, Tensor idx)
        {
            var k = t.index_select(0, idx.to(t.device)).DetachFromDisposeScope();
            owned.Remove(t);
            t.Dispose();
            owned.Add(k);
            return k;
        }
        using (var both = cfg ? cat([rows, rows + ctx.shape[0] / 2]) : rows.alias())
        {
            ctx = Select(ctx, both);
            ctxIds = Select(ctxIds, both);
        }
        if (imgIds.shape[0] > 1) imgIds = Select(imgIds, rows);
        if (refTokens is not null && refTokens.shape[0] > 1) { refTokens = Select(refTokens, rows); refIds = Select(refIds!, rows); }
    }

    public void Dispose()
    {
        foreach (var t in owned) t.Dispose();
        owned.Clear();
    }
}
