using InferenceServer.Models.Flux2;
using InferenceServer.Models.Runtime;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>
/// One finished sampler step. The tensors are valid only inside the callback (they are disposed with the step);
/// clone what you keep.
/// </summary>
/// <param name="Index">0-based step.</param>
/// <param name="Count">Number of steps.</param>
/// <param name="TCurr">Timestep the model saw.</param>
/// <param name="TPrev">Timestep reached.</param>
/// <param name="Latents">[B, L_img, C] image tokens after the step (float32).</param>
/// <param name="Velocity">[B, L_img, C] the (guided) prediction used for the step.</param>
public sealed record DenoiseStep(int Index, int Count, float TCurr, float TPrev, Tensor Latents, Tensor Velocity);

/// <summary>
/// Euler flow-matching loops (BFL <c>denoise</c>, <c>denoise_cfg</c>). Reference tokens are appended after the image
/// tokens and only the image tokens' prediction is used. Latents stay float32 whatever the model dtype; each step
/// runs in its own dispose scope, and the cancellation token is checked before every step and after the callback.
/// <para>Device: every input is moved to the model's device once, before the first step (host tensors bound for CUDA
/// through pinned memory, without blocking); the result stays there. The loop itself makes no host synchronisation:
/// no <c>item()</c>, no copy to the host, timesteps are host floats; on CUDA the host only queues kernels.</para>
/// </summary>
public static class FlowSampler
{
    /// <summary>
    /// For benchmarks: while the returned scope is open, each step ends with a device synchronisation before the step
    /// callback, so wall-clock step timings measure the step (<see cref="ComputeDevice.SynchronizedTiming"/>).
    /// </summary>
    public static IDisposable SynchronizeEachStep() => ComputeDevice.SynchronizedTiming();

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
        CheckRefs(refTokens, refIds);
        var dev = model.Device;
        using var inputs = new Uploaded(dev);
        (imgIds, txt, txtIds, refTokens, refIds) = (inputs.Add(imgIds)!, inputs.Add(txt)!, inputs.Add(txtIds)!, inputs.Add(refTokens), inputs.Add(refIds));
        return Loop(img, dev, timesteps, onStep, cancellationToken, (x, tCurr) => Velocity(model, cfg: false, x, imgIds, txt, txtIds, tCurr, guidance, refTokens, refIds));
    }

    /// <summary>
    /// Classifier-free guidance for non-distilled models: <paramref name="txt"/> is cat([uncond, cond]) ([2B, Lt, D]);
    /// pred = u + guidance (c - u); the model is called with no guidance embedding input.
    /// </summary>
    public static Tensor DenoiseCfg(Flux2Transformer model, Tensor img, Tensor imgIds, Tensor txt, Tensor txtIds, IReadOnlyList<float> timesteps,
        float guidance, Tensor? refTokens = null, Tensor? refIds = null, Action<DenoiseStep>? onStep = null, CancellationToken cancellationToken = default)
    {
        CheckRefs(refTokens, refIds);
        if (txt.shape[0] != 2 * img.shape[0]) throw new ArgumentException($"txt [{string.Join(", ", txt.shape)}] must hold [uncond; cond] for the {img.shape[0]} image(s) of img [{string.Join(", ", img.shape)}]", nameof(txt));
        var dev = model.Device;
        using var inputs = new Uploaded(dev);
        (imgIds, txt, txtIds, refTokens, refIds) = (inputs.Add(imgIds)!, inputs.Add(txt)!, inputs.Add(txtIds)!, inputs.Add(refTokens), inputs.Add(refIds));
        return Loop(img, dev, timesteps, onStep, cancellationToken, (x, tCurr) => Velocity(model, cfg: true, x, imgIds, txt, txtIds, tCurr, guidance, refTokens, refIds));
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

    /// <summary>The Euler update <c>x + (t_prev - t_curr) v</c> (Python float step on a float32 tensor, as BFL).</summary>
    public static Tensor EulerStep(Tensor x, Tensor velocity, float tCurr, float tPrev) => x + velocity * ((double)tPrev - tCurr);

    static Tensor Loop(Tensor img, Device device, IReadOnlyList<float> timesteps, Action<DenoiseStep>? onStep, CancellationToken ct, Func<Tensor, float, Tensor> velocity)
    {
        if (timesteps.Count < 2) throw new ArgumentException($"need at least 2 timesteps, got {timesteps.Count}", nameof(timesteps));
        var x = ComputeDevice.Upload(img, device, ScalarType.Float32); // [B, L_img, C] f32 on the model's device
        bool owned = !ReferenceEquals(x, img) && x.Handle != img.Handle;
        for (int i = 0; i < timesteps.Count - 1; i++)
        {
            ct.ThrowIfCancellationRequested();
            float tCurr = timesteps[i], tPrev = timesteps[i + 1];
            using (var scope = NewDisposeScope())
            {
                var pred = velocity(x, tCurr).to(ScalarType.Float32);           // [B, L_img, C]
                var next = EulerStep(x, pred, tCurr, tPrev);
                ComputeDevice.SyncForTiming(device);                            // benchmarks only; no-op otherwise
                onStep?.Invoke(new DenoiseStep(i, timesteps.Count - 1, tCurr, tPrev, next, pred));
                next.MoveToOuterDisposeScope();
                if (owned) x.Dispose();
                x = next;
                owned = true;
            }
            ct.ThrowIfCancellationRequested();
        }
        return owned ? x : x.clone();
    }

    /// <summary>
    /// The inputs moved to the model's device for one loop, disposed when it ends. Not a dispose scope: a step callback may
    /// move its clones to the caller's scope, and a scope here would catch them.
    /// </summary>
    sealed class Uploaded(Device device) : IDisposable
    {
        readonly List<Tensor> tensors = [];

        public Tensor? Add(Tensor? t)
        {
            if (t is null) return null;
            var u = ComputeDevice.Upload(t, device);
            tensors.Add(u);
            return u;
        }

        public void Dispose()
        {
            foreach (var t in tensors) t.Dispose();
        }
    }

    static (Tensor X, Tensor Ids) WithRefs(Tensor x, Tensor ids, Tensor? refTokens, Tensor? refIds)
    {
        if (refTokens is null) return (x, ids);
        var r = refTokens.shape[0] == x.shape[0] ? refTokens : refTokens.expand(x.shape[0], -1, -1);
        var ri = refIds!.shape[0] == x.shape[0] ? refIds : refIds.expand(x.shape[0], -1, -1);
        return (cat([x, r.to(x.dtype)], 1), cat([ids, ri], 1));
    }

    static void CheckRefs(Tensor? refTokens, Tensor? refIds)
    {
        if ((refTokens is null) != (refIds is null)) throw new ArgumentException("reference tokens and reference ids come together (both or neither)");
        if (refTokens is not null && (refTokens.dim() != 3 || refIds!.dim() != 3 || refTokens.shape[1] != refIds.shape[1]))
            throw new ArgumentException($"reference tokens [{string.Join(", ", refTokens.shape)}] and ids [{string.Join(", ", refIds!.shape)}] must be [B, L_ref, C] and [B, L_ref, 4]");
    }
}
