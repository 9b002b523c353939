using InferenceServer.Models.Flux2;
using InferenceServer.Models.Runtime;
using InferenceServer.Pipeline.Generation;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>
/// BFL <c>denoise</c> and <c>denoise_cfg</c> for one FLUX.2 transformer: a <see cref="Flux2Denoiser"/> run by
/// <see cref="SamplingLoop"/>, the loop that serves requests. The cancellation token is checked before every step and
/// after the last. Every input is moved to the model's device once; the result stays there.
/// </summary>
public static class FlowSampler
{
    /// <summary>Guidance-distilled sampling (klein): one model call per step.</summary>
    /// <param name="img">[B, L_img, C] initial noise tokens (not modified, not disposed).</param>
    /// <param name="imgIds">[B, L_img, 4]</param>
    /// <param name="txt">[B, Lt, ctx_dim]</param>
    /// <param name="txtIds">[B, Lt, 4]</param>
    /// <param name="timesteps">From <see cref="FlowSchedule.GetSchedule"/>.</param>
    /// <param name="guidance">Guidance scale for models with a guidance embedding (ignored otherwise).</param>
    /// <param name="refTokens">[B or 1, L_ref, C] reference tokens, or null.</param>
    /// <param name="refIds">[B or 1, L_ref, 4]</param>
    /// <returns>[B, L_img, C] float32 denoised tokens (caller owns).</returns>
    public static Tensor Denoise(Flux2Transformer model, Tensor img, Tensor imgIds, Tensor txt, Tensor txtIds, IReadOnlyList<float> timesteps,
        float guidance, Tensor? refTokens = null, Tensor? refIds = null, Action<DenoiseStep>? onStep = null, CancellationToken cancellationToken = default)
    {
        using var denoiser = new Flux2Denoiser(model, cfg: false, guidance, imgIds, txt, txtIds, refTokens, refIds);
        return Run(model, denoiser, img, timesteps, onStep, cancellationToken);
    }

    /// <summary>
    /// Classifier-free guidance for non-distilled models: <paramref name="txt"/> is cat([uncond, cond]) ([2B, Lt, D]);
    /// pred = u + guidance (c - u); the model is called with no guidance embedding input.
    /// </summary>
    public static Tensor DenoiseCfg(Flux2Transformer model, Tensor img, Tensor imgIds, Tensor txt, Tensor txtIds, IReadOnlyList<float> timesteps,
        float guidance, Tensor? refTokens = null, Tensor? refIds = null, Action<DenoiseStep>? onStep = null, CancellationToken cancellationToken = default)
    {
        if (txt.shape[0] != 2 * img.shape[0]) throw new ArgumentException($"txt [{string.Join(", ", txt.shape)}] must hold [uncond; cond] for the {img.shape[0]} image(s) of img [{string.Join(", ", img.shape)}]", nameof(txt));
        using var denoiser = new Flux2Denoiser(model, cfg: true, guidance, imgIds, txt, txtIds, refTokens, refIds);
        return Run(model, denoiser, img, timesteps, onStep, cancellationToken);
    }

    static Tensor Run(Flux2Transformer model, Flux2Denoiser denoiser, Tensor img, IReadOnlyList<float> timesteps, Action<DenoiseStep>? onStep, CancellationToken ct)
    {
        if (timesteps.Count < 2) throw new ArgumentException($"need at least 2 timesteps, got {timesteps.Count}", nameof(timesteps));
        using var x = ComputeDevice.Upload(img, model.Device, ScalarType.Float32);   // [B, L_img, C] f32 on the model's device
        return SamplingLoop.Run(denoiser, x, timesteps, onStep: onStep, cancellationToken: ct);
    }

    /// <summary>
    /// One model evaluation of a step (the body of <see cref="Denoise"/> and <see cref="DenoiseCfg"/>, open to batch loops that
    /// change their rows between steps). Distilled: one call, guidance embedded when the model has it. CFG: <paramref name="txt"/>
    /// is [uncond; cond] ([2B, Lt, D]), pred = u + guidance (c - u).
    /// </summary>
    /// <param name="x">[B, L_img, C] image tokens at <paramref name="tCurr"/>.</param>
    /// <param name="imgIds">[B, L_img, 4]</param>
    /// <returns>[B, L_img, C] float32 velocity of the image tokens.</returns>
    public static Tensor Velocity(Flux2Transformer model, bool cfg, Tensor x, Tensor imgIds, Tensor txt, Tensor txtIds, float tCurr, float guidance,
        Tensor? refTokens = null, Tensor? refIds = null)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0];
        int li = (int)x.shape[1];
        if (!cfg)
        {
            var tVec = full(b, tCurr, ScalarType.Float32, x.device);
            var gVec = model.Config.UseGuidanceEmbed ? full(b, guidance, ScalarType.Float32, x.device) : null;
            var (input, ids) = WithRefs(x, imgIds, refTokens, refIds);
            return model.Forward(input, ids, tVec, txt, txtIds, gVec)[.., ..li].to(ScalarType.Float32).MoveToOuterDisposeScope();
        }
        var x2 = cat([x, x], 0);
        var ids2 = cat([imgIds, imgIds], 0);
        var (r2, rid2) = refTokens is null ? (null, null) : (cat([refTokens, refTokens], 0), cat([refIds!, refIds!], 0));
        var (input2, idsAll) = WithRefs(x2, ids2, r2, rid2);
        var t2 = full(x2.shape[0], tCurr, ScalarType.Float32, x.device);
        var pred = model.Forward(input2, idsAll, t2, txt, txtIds, null)[.., ..li].to(ScalarType.Float32);
        var uc = pred.chunk(2, 0);
        return (uc[0] + guidance * (uc[1] - uc[0])).MoveToOuterDisposeScope();
    }

    static (Tensor X, Tensor Ids) WithRefs(Tensor x, Tensor ids, Tensor? refTokens, Tensor? refIds)
    {
        if (refTokens is null) return (x, ids);
        var r = refTokens.shape[0] == x.shape[0] ? refTokens : refTokens.expand(x.shape[0], -1, -1);
        var ri = refIds!.shape[0] == x.shape[0] ? refIds : refIds.expand(x.shape[0], -1, -1);
        return (cat([x, r.to(x.dtype)], 1), cat([ids, ri], 1));
    }
}
