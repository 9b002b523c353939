using InferenceServer.Models.Runtime;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Weights;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// The Z-Image(-Turbo) diffusion transformer (official <c>ZImageTransformer2DModel</c>, Tongyi-MAI/Z-Image): image tokens
/// through <c>noise_refiner</c> (modulated), caption rows through <c>context_refiner</c> (unmodulated), then
/// <c>unified = [image, caption]</c> through <c>layers</c> and the scale-only final layer. Parameter names are the
/// official/diffusers state-dict keys (<c>layers.0.attention.to_q.weight</c>, <c>all_x_embedder.2-1.weight</c>, ...).
/// <para>Precision (as <see cref="Flux2Transformer"/>): parameters and activations in the module dtype (FP32 or BF16); the
/// timestep embedding, RoPE tables (angles in float64) and rotation, and RMSNorm statistics in float32.</para>
/// </summary>
public sealed class ZImageTransformer : Module
{
    readonly Parameter x_pad_token;   // [1, dim]: replaces the image pad rows after the embedder
    readonly Parameter cap_pad_token; // [1, dim]: replaces the caption pad rows after the embedder
    readonly ZImagePatchKeyed<Module<Tensor, Tensor>> all_x_embedder; // "2-1": Linear(64, dim, bias)
    readonly ZImagePatchKeyed<ZImageFinalLayer> all_final_layer;      // "2-1"
    readonly ModuleList<ZImageBlock> noise_refiner;
    readonly ModuleList<ZImageBlock> context_refiner;
    readonly ZImageTimestepEmbedder t_embedder;
    readonly ZImageCaptionEmbedder cap_embedder;
    readonly ModuleList<ZImageBlock> layers;

    /// <summary>The hyper-parameters this module was built from.</summary>
    public ZImageConfig Config { get; }

    /// <summary>
    /// Builds the module directly on <paramref name="device"/> in <paramref name="dtype"/> (default CPU, float32; the <c>meta</c>
    /// device allocates nothing). Weights are PyTorch-default random (pad tokens zero): load a checkpoint with <see cref="Load"/>.
    /// </summary>
    public ZImageTransformer(ZImageConfig config, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageTransformer))
    {
        Config = config.Validated();
        var c = Config;
        x_pad_token = new Parameter(zeros(1, c.Dim, dtype: dtype, device: device), requires_grad: false);
        cap_pad_token = new Parameter(zeros(1, c.Dim, dtype: dtype, device: device), requires_grad: false);
        all_x_embedder = new(Linear(c.PatchDim, c.Dim, hasBias: true, device: device, dtype: dtype));
        all_final_layer = new(new ZImageFinalLayer(c, device, dtype));
        noise_refiner = new(Enumerable.Range(0, c.NRefinerLayers).Select(_ => new ZImageBlock(c, modulation: true, device, dtype)).ToArray());
        context_refiner = new(Enumerable.Range(0, c.NRefinerLayers).Select(_ => new ZImageBlock(c, modulation: false, device, dtype)).ToArray());
        t_embedder = new ZImageTimestepEmbedder(c, device, dtype);
        cap_embedder = new ZImageCaptionEmbedder(c, device, dtype);
        layers = new(Enumerable.Range(0, c.NLayers).Select(_ => new ZImageBlock(c, modulation: true, device, dtype)).ToArray());
        RegisterComponents();
        foreach (var (_, p) in named_parameters()) p.requires_grad = false;
    }

    /// <summary>Builds a module for <paramref name="config"/> and loads <paramref name="source"/> (diffusers or single-file names) strictly.</summary>
    public static ZImageTransformer Load(ITensorSource source, ZImageConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        var model = new ZImageTransformer(config, device, dtype);
        try { ZImageCheckpoint.Load(model, source); }
        catch { model.Dispose(); throw; }
        return model;
    }

    /// <summary>The dtype of the parameters and of the activations.</summary>
    public ScalarType DType => parameters().First(p => p.is_floating_point()).dtype;

    /// <summary>The device of the parameters.</summary>
    public Device Device => parameters().First().device;

    /// <summary>
    /// The raw model output for a batch of images that share one token grid (the sampler uses <c>noise_pred = -output</c>).
    /// Each sample is computed independently of its batch neighbours (caption lengths may differ: zero batch padding plus a key mask).
    /// </summary>
    /// <param name="x">[B, gridH*gridW, 64] patchified latents (<see cref="ZImagePatches.Patchify"/>).</param>
    /// <param name="gridH">Token rows (latent height / 2).</param>
    /// <param name="gridW">Token columns (latent width / 2).</param>
    /// <param name="t">[B] MODEL time: 0 = pure noise, 1 = clean (the pipeline passes 1 - sigma).</param>
    /// <param name="captions">B caption feature matrices [L_i, cap_feat_dim] (L_i &gt;= 1, pads already dropped).</param>
    /// <param name="trace">When given, receives intermediates named as the fixtures' <c>dbg.*</c> without the prefix, float32, owned by the caller.</param>
    /// <returns>[B, gridH*gridW, 64] in the module dtype.</returns>
    public Tensor Forward(Tensor x, long gridH, long gridW, Tensor t, IReadOnlyList<Tensor> captions, IDictionary<string, Tensor>? trace = null)
    {
        Validate(x, gridH, gridW, t, captions);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var c = Config;
        var dt = DType;
        var dev = Device;
        int b = (int)x.shape[0];
        long lx = gridH * gridW, padX = ZImageMath.PadLength(lx, c.SeqMultiOf), lxp = lx + padX;
        void Trace(string name, Tensor v) { if (trace is not null) trace[name] = v.detach().to(ScalarType.Float32, CPU).clone().DetachFromDisposeScope(); }

        // Timestep: [cos, sin]((t * t_scale) * freqs) in float32 with the reference op order, then the MLP in the module dtype.
        var tm = t.to(ScalarType.Float32, dev);
        Trace("t_embedder_in", tm * c.TScale);
        var temb = Flux2Math.TimestepEmbedding(tm, c.FrequencyEmbeddingSize, c.MaxPeriod, c.TScale); // [B, 256] f32
        Trace("timestep_embedding", temb);
        var cond = Flux2Math.RowWise(temb.to(dt), t_embedder.forward);                                 // [B, adaln_dim]
        Trace("adaln_input", cond);

        // Per-sample lengths: the image grid is shared, caption lengths are not.
        var capLens = captions.Select(k => k.shape[0]).ToArray();
        var capPadded = capLens.Select(l => l + ZImageMath.PadLength(l, c.SeqMultiOf)).ToArray();
        CheckPositions(gridH, gridW, capPadded.Max());

        // Image stream: pad to a multiple of 32 by repeating the last token, embed, pad rows := x_pad_token.
        var tokens = x.to(dt, dev);
        var xPadded = padX == 0 ? tokens : cat([tokens, tokens[.., ^1..].expand(b, padX, tokens.shape[2])], 1); // [B, Lxp, 64]
        var xPadMask = (arange(lxp, ScalarType.Int64, dev) >= lx);                                                // [Lxp]
        var xEmb = all_x_embedder.Entry.call(xPadded);                                                        // [B, Lxp, dim]
        var img = where(xPadMask.view(1, lxp, 1), x_pad_token, xEmb);
        var xIds = Enumerable.Range(0, b).Select(i => ZImageMath.ImagePositions(gridH, gridW, padX, capPadded[i], dev)).ToArray(); // [Lxp, 3] each
        var xFreqs = stack(xIds.Select(ids => ZImageMath.RopeTable(ids, c.AxesDims, c.RopeTheta)).ToList(), 0); // [B, Lxp, D/2, 2]

        // Caption stream: each sample padded to a multiple of 32 the same way, embedded together, pad rows := cap_pad_token.
        var capRows = captions.Select((k, i) => ZImageMath.RepeatLast(k.to(dt, dev), capPadded[i] - capLens[i])).ToList();
        var capIn = cat(capRows, 0);                                                                               // [sum Lcp, cap_feat_dim]
        var capNorm = cap_embedder.Norm(capIn);
        var capEmb = cap_embedder.Project(capNorm);                                                                // [sum Lcp, dim]
        var capPadMask = cat(Enumerable.Range(0, b).Select(i => arange(capPadded[i], ScalarType.Int64, dev) >= capLens[i]).ToList(), 0);
        var capAll = where(capPadMask.unsqueeze(1), cap_pad_token, capEmb);
        var capSeqs = capAll.split(capPadded, 0);
        var capFreqSeqs = capPadded.Select(l => ZImageMath.RopeTable(ZImageMath.CaptionPositions(l, dev), c.AxesDims, c.RopeTheta)).ToArray();
        var (cap, capMask) = ZImageMath.PadBatch(capSeqs);
        var (capFreqs, _) = ZImageMath.PadBatch(capFreqSeqs);

        if (trace is not null)
        {
            Trace("x_embedder_in", xPadded.reshape(-1, xPadded.shape[2]));
            Trace("x_embedder_out", xEmb.reshape(-1, xEmb.shape[2]));
            Trace("cap_embedder_in", capIn);
            Trace("cap_rmsnorm_out", capNorm);
            Trace("cap_embedder_out", capEmb);
            for (int i = 0; i < b; i++)
            {
                Trace($"x_tokens_padded.{i}", xPadded[i]);
                Trace($"x_pos_ids.{i}", xIds[i]);
                Trace($"x_pad_mask.{i}", xPadMask);
                Trace($"cap_feats_padded.{i}", capRows[i]);
                Trace($"cap_pos_ids.{i}", ZImageMath.CaptionPositions(capPadded[i], dev));
                Trace($"cap_pad_mask.{i}", arange(capPadded[i], ScalarType.Int64, dev) >= capLens[i]);
            }
            Trace("noise_refiner_in", img);
            Trace("noise_refiner_attn_mask", ones(b, lxp));
            Trace("noise_refiner_freqs_cis", xFreqs);
            Trace("context_refiner_in", cap);
            Trace("context_refiner_attn_mask", KeyMask(capMask, b, cap.shape[1]));
            Trace("context_refiner_freqs_cis", capFreqs);
        }

        // Each block's input is disposed as soon as its output exists: at full size a stream is ~35 MB per sample and block.
        for (int i = 0; i < noise_refiner.Count; i++)
        {
            using var mod = noise_refiner[i].Modulation(cond);
            if (i == 0) Trace("noise_refiner.0.adaLN_out", mod);
            img = Replace(img, noise_refiner[i].forward(img, xFreqs, null, mod)); // one grid for the batch: no batch padding
            Trace($"noise_refiner.{i}.out", img);
        }
        for (int i = 0; i < context_refiner.Count; i++)
        {
            cap = Replace(cap, context_refiner[i].forward(cap, capFreqs, capMask, null));
            Trace($"context_refiner.{i}.out", cap);
        }

        // Unified sequence per sample: [image (all Lxp rows), caption (its Lcp rows)], image first; zero batch padding.
        var (uni, uniMask) = ZImageMath.PadBatch(Enumerable.Range(0, b).Select(i => cat([img[i], cap[i, ..(int)capPadded[i]]], 0)).ToList());
        var (uniFreqs, _) = ZImageMath.PadBatch(Enumerable.Range(0, b).Select(i => cat([xFreqs[i], capFreqSeqs[i]], 0)).ToList());
        img.Dispose(); cap.Dispose();
        Trace("layers_in", uni);
        Trace("layers_attn_mask", KeyMask(uniMask, b, uni.shape[1]));
        Trace("layers_freqs_cis", uniFreqs);
        for (int i = 0; i < layers.Count; i++)
        {
            using var mod = layers[i].Modulation(cond);
            if (i == 0) Trace("layers.0.adaLN_out", mod);
            uni = Replace(uni, layers[i].forward(uni, uniFreqs, uniMask, mod));
            Trace($"layers.{i}.out", uni);
        }

        var final = all_final_layer.Entry;
        var scale = final.Scale(cond);
        Trace("final_adaLN_out", scale);
        var y = final.forward(uni, scale); // [B, Lu, 64]
        Trace("final_layer_out", y);
        return y[.., ..(int)lx].contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>Frees a block's input once its output exists; a batch whose every request was cancelled stops here (<see cref="ComputeCancellation"/>).</summary>
    static Tensor Replace(Tensor old, Tensor next)
    {
        old.Dispose();
        return ComputeCancellation.Checked(next);
    }

    static Tensor KeyMask(Tensor? mask, long b, long l) => mask is null ? ones(b, l) : mask.view(b, l).to(ScalarType.Float32);

    void Validate(Tensor x, long gridH, long gridW, Tensor t, IReadOnlyList<Tensor> captions)
    {
        var c = Config;
        static string S(Tensor v) => "[" + string.Join(", ", v.shape) + "]";
        if (gridH <= 0 || gridW <= 0) throw new ArgumentException($"grid {gridH}x{gridW} must be positive", nameof(gridH));
        if (x.dim() != 3 || x.shape[1] != gridH * gridW || x.shape[2] != c.PatchDim)
            throw new ArgumentException($"x must be [B, gridH*gridW = {gridH * gridW}, {c.PatchDim}] patchified tokens, got {S(x)}", nameof(x));
        long b = x.shape[0];
        if (b < 1) throw new ArgumentException("x has an empty batch", nameof(x));
        if (t.dim() != 1 || t.shape[0] != b) throw new ArgumentException($"t must be [{b}] (one model time per sample of x {S(x)}), got {S(t)}", nameof(t));
        if (captions.Count != b) throw new ArgumentException($"{captions.Count} caption tensors for a batch of {b}", nameof(captions));
        for (int i = 0; i < captions.Count; i++)
            if (captions[i].dim() != 2 || captions[i].shape[0] < 1 || captions[i].shape[1] != c.CapFeatDim)
                throw new ArgumentException($"captions[{i}] must be [L >= 1, {c.CapFeatDim}], got {S(captions[i])}", nameof(captions));
    }

    /// <summary>The official RoPE table has axes_lens rows per axis: positions past it are refused, as the reference would fail.</summary>
    void CheckPositions(long gridH, long gridW, long maxCapPadded)
    {
        var lens = Config.AxesLens;
        if (maxCapPadded + 1 >= lens[0] || gridH > lens[1] || gridW > lens[2])
            throw new ArgumentException($"positions out of the RoPE range axes_lens [{string.Join(", ", lens)}]: caption rows up to {maxCapPadded} (t position {maxCapPadded + 1}), token grid {gridH}x{gridW}");
    }
}
