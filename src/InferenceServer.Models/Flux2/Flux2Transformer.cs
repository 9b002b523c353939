using InferenceServer.Models.Runtime;
using InferenceServer.Models.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Flux2;

/// <summary>
/// The FLUX.2 diffusion transformer (BFL <c>Flux2</c>): image and text tokens, <see cref="Flux2Config.Depth"/>
/// double-stream blocks, <see cref="Flux2Config.DepthSingleBlocks"/> single-stream blocks over [txt, img], shared
/// modulation, final adaLN layer. Parameter names are the BFL checkpoint keys.
/// <para>Precision: parameters and activations run in the module's dtype (FP32 or BF16); the timestep/guidance
/// embedding, the RoPE tables (angles in float64) and the RoPE rotation, and the RMSNorm statistics are computed
/// in float32 and cast back; timesteps stay float32 (BFL rounds them to the model dtype first).</para>
/// </summary>
public sealed class Flux2Transformer : Module, ILinearHost
{
    Module<Tensor, Tensor> img_in;                         // [hidden, in_channels]
    readonly MLPEmbedder time_in;
    readonly MLPEmbedder? guidance_in;                // only when use_guidance_embed
    Module<Tensor, Tensor> txt_in;                         // [hidden, context_in_dim]
    readonly ModuleList<DoubleStreamBlock> double_blocks;
    readonly ModuleList<SingleStreamBlock> single_blocks;
    readonly Modulation double_stream_modulation_img; // lin: [6*hidden, hidden]
    readonly Modulation double_stream_modulation_txt; // lin: [6*hidden, hidden]
    readonly Modulation single_stream_modulation;     // lin: [3*hidden, hidden]
    readonly LastLayer final_layer;

    /// <summary>The hyper-parameters this module was built from.</summary>
    public Flux2Config Config { get; }

    /// <summary>
    /// Builds the module directly on <paramref name="device"/> in <paramref name="dtype"/> (default CPU, float32; the
    /// <c>meta</c> device allocates nothing). Weights are PyTorch-default random: load a checkpoint or call <see cref="InitRandom"/>.
    /// </summary>
    public Flux2Transformer(Flux2Config config, Device? device = null, ScalarType? dtype = null) : base(nameof(Flux2Transformer))
    {
        Config = config.Validated();
        var c = Config;
        img_in = Linear(c.InChannels, c.HiddenSize, hasBias: false, device: device, dtype: dtype);
        time_in = new MLPEmbedder(c.TimestepEmbedDim, c.HiddenSize, device, dtype);
        guidance_in = c.UseGuidanceEmbed ? new MLPEmbedder(c.TimestepEmbedDim, c.HiddenSize, device, dtype) : null;
        txt_in = Linear(c.ContextInDim, c.HiddenSize, hasBias: false, device: device, dtype: dtype);
        double_blocks = new ModuleList<DoubleStreamBlock>(Enumerable.Range(0, c.Depth).Select(_ => new DoubleStreamBlock(c, device, dtype)).ToArray());
        single_blocks = new ModuleList<SingleStreamBlock>(Enumerable.Range(0, c.DepthSingleBlocks).Select(_ => new SingleStreamBlock(c, device, dtype)).ToArray());
        double_stream_modulation_img = new Modulation(c.HiddenSize, 6, device, dtype);
        double_stream_modulation_txt = new Modulation(c.HiddenSize, 6, device, dtype);
        single_stream_modulation = new Modulation(c.HiddenSize, 3, device, dtype);
        final_layer = new LastLayer(c.HiddenSize, c.InChannels, c.LayerNormEps, device, dtype);
        RegisterComponents();
        foreach (var (_, p) in named_parameters()) p.requires_grad = false;
    }

    /// <summary>The dtype of the floating-point parameters (all share one) and of the activations; 8-bit weights are dequantized to it.</summary>
    public ScalarType DType => parameters().First(p => p.is_floating_point()).dtype;

    /// <summary>The device of the parameters.</summary>
    public Device Device => parameters().First().device;

    /// <summary>
    /// How the weights are stored and multiplied, e.g. "bf16", "fp8 weights (e4m3, per-tensor scale), dequantized per layer (cpu)",
    /// "fp8 scaled_mm (cuda)" or "int8 weight-only (per-output-channel scale), dequantized per layer to bf16 into a reused buffer (cpu)": for ListModels and the log.
    /// </summary>
    public string WeightFormat => Quantization.WeightQuantizer.Describe(this);

    /// <summary>
    /// Predicts the flow velocity of the image tokens.
    /// </summary>
    /// <param name="x">[B, L, in_channels] image (and appended reference) tokens.</param>
    /// <param name="xIds">[B, L, n_axes] int64 (t, h, w, l) positions.</param>
    /// <param name="timesteps">[B] in [0, 1].</param>
    /// <param name="ctx">[B, Lt, context_in_dim] text features.</param>
    /// <param name="ctxIds">[B, Lt, n_axes] int64 positions.</param>
    /// <param name="guidance">[B] guidance scale; required when the config uses a guidance embedding, ignored otherwise.</param>
    /// <param name="trace">When given, receives intermediate activations (named as the fixtures' <c>dbg.*</c> without the prefix), detached from every dispose scope: the caller owns them.</param>
    /// <returns>[B, L, in_channels] in the module's dtype.</returns>
    public Tensor Forward(Tensor x, Tensor xIds, Tensor timesteps, Tensor ctx, Tensor ctxIds, Tensor? guidance = null, IDictionary<string, Tensor>? trace = null)
    {
        Validate(x, xIds, timesteps, ctx, ctxIds, guidance);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var c = Config;
        var dt = DType;
        var dev = Device;
        // Inputs may come from the host (ids, timesteps, the sampler's first latents): each is moved once per call; on the
        // module's own device this is an alias, so the CPU path is unchanged.
        (xIds, ctxIds, timesteps) = (xIds.to(dev), ctxIds.to(dev), timesteps.to(dev));
        guidance = guidance?.to(dev);
        void Trace(string name, Tensor t) { if (trace is not null) trace[name] = t.detach().to(ScalarType.Float32).clone().DetachFromDisposeScope(); }

        var temb = Flux2Math.TimestepEmbedding(timesteps, c.TimestepEmbedDim, c.MaxPeriod, c.TimeFactor); // [B, 256] f32
        Trace("timestep_embedding", temb);
        var vec = Flux2Math.RowWise(temb.to(dt), time_in.forward);                                         // [B, hidden]
        Trace("time_in_out", vec);
        if (guidance_in is not null)
        {
            var g = Flux2Math.RowWise(Flux2Math.TimestepEmbedding(guidance!, c.TimestepEmbedDim, c.MaxPeriod, c.TimeFactor).to(dt), guidance_in.forward);
            Trace("guidance_in_out", g);
            vec = vec + g;
        }

        var modImgRaw = Flux2Math.RowWise(vec, double_stream_modulation_img.Project); // [B, 6*hidden]
        var modTxtRaw = Flux2Math.RowWise(vec, double_stream_modulation_txt.Project); // [B, 6*hidden]
        var modSingleRaw = Flux2Math.RowWise(vec, single_stream_modulation.Project);  // [B, 3*hidden]
        foreach (var n in new[] { "double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation" }) Trace(n + "_vec_in", vec);
        Trace("double_stream_modulation_img_lin_out", modImgRaw);
        Trace("double_stream_modulation_txt_lin_out", modTxtRaw);
        Trace("single_stream_modulation_lin_out", modSingleRaw);
        var modImg = double_stream_modulation_img.Chunks(modImgRaw);       // 6 x [B, 1, hidden]
        var modTxt = double_stream_modulation_txt.Chunks(modTxtRaw);       // 6 x [B, 1, hidden]
        var modSingle = single_stream_modulation.Chunks(modSingleRaw);     // 3 x [B, 1, hidden]

        var img = img_in.call(x.to(dt, dev));     // [B, Li, hidden]
        var txt = txt_in.call(ctx.to(dt, dev));   // [B, Lt, hidden]
        Trace("img_in_out", img);
        Trace("txt_in_out", txt);
        var peX = Flux2Math.RopeTable(xIds, c.AxesDim, c.Theta);     // [B, 1, Li, D/2, 2, 2] f32
        var peCtx = Flux2Math.RopeTable(ctxIds, c.AxesDim, c.Theta); // [B, 1, Lt, D/2, 2, 2] f32
        Trace("pe_x", peX);
        Trace("pe_ctx", peCtx);
        var pe = cat([peCtx, peX], 2);                                 // [B, 1, Lt+Li, D/2, 2, 2]

        // Between blocks a batch whose every request was cancelled (deadline, client gone) stops: a 4K step runs for minutes on a CPU.
        for (int i = 0; i < double_blocks.Count; i++)
        {
            ComputeCancellation.ThrowIfCancelled();
            var (img2, txt2) = double_blocks[i].forward(img, txt, pe, modImg, modTxt);
            img.Dispose(); txt.Dispose();
            (img, txt) = (img2, txt2);
            Trace($"double_blocks.{i}.img_out", img);
            Trace($"double_blocks.{i}.txt_out", txt);
        }

        long lt = txt.shape[1];
        var h = cat([txt, img], 1); // [B, Lt+Li, hidden]
        img.Dispose(); txt.Dispose();
        for (int i = 0; i < single_blocks.Count; i++)
        {
            ComputeCancellation.ThrowIfCancelled();
            var h2 = single_blocks[i].forward(h, pe, modSingle);
            h.Dispose();
            h = h2;
            Trace($"single_blocks.{i}.out", h);
        }
        var imgOut = h[.., (int)lt..]; // [B, Li, hidden]
        Trace("final_layer_in", imgOut);
        return final_layer.forward(imgOut, vec).MoveToOuterDisposeScope(); // [B, Li, in_channels]
    }

    void Validate(Tensor x, Tensor xIds, Tensor timesteps, Tensor ctx, Tensor ctxIds, Tensor? guidance)
    {
        var c = Config;
        static string S(Tensor t) => "[" + string.Join(", ", t.shape) + "]";
        static void Fail(string message, string param) => throw new ArgumentException(message, param);
        int axes = c.AxesDim.Length;
        if (x.dim() != 3 || x.shape[2] != c.InChannels) Fail($"x (image tokens) must be [B, L, {c.InChannels}], got {S(x)}", nameof(x));
        if (ctx.dim() != 3 || ctx.shape[2] != c.ContextInDim) Fail($"ctx (text features) must be [B, Lt, {c.ContextInDim}], got {S(ctx)}", nameof(ctx));
        long b = x.shape[0];
        if (ctx.shape[0] != b) Fail($"batch mismatch: x {S(x)} vs ctx {S(ctx)}", nameof(ctx));
        if (xIds.dim() != 3 || xIds.shape[0] != b || xIds.shape[1] != x.shape[1] || xIds.shape[2] != axes)
            Fail($"x_ids must be [B, L, {axes}] matching x {S(x)}, got {S(xIds)}", nameof(xIds));
        if (ctxIds.dim() != 3 || ctxIds.shape[0] != b || ctxIds.shape[1] != ctx.shape[1] || ctxIds.shape[2] != axes)
            Fail($"ctx_ids must be [B, Lt, {axes}] matching ctx {S(ctx)}, got {S(ctxIds)}", nameof(ctxIds));
        if (xIds.is_floating_point() || ctxIds.is_floating_point()) Fail($"x_ids/ctx_ids must be integer positions, got {xIds.dtype}/{ctxIds.dtype}", nameof(xIds));
        if (timesteps.dim() != 1 || timesteps.shape[0] != b) Fail($"timesteps must be [{b}] (one per batch element of x {S(x)}), got {S(timesteps)}", nameof(timesteps));
        if (c.UseGuidanceEmbed)
        {
            if (guidance is null) Fail("guidance is required: this model has a guidance embedding (use_guidance_embed)", nameof(guidance));
            else if (guidance.dim() != 1 || guidance.shape[0] != b) Fail($"guidance must be [{b}] (one per batch element of x {S(x)}), got {S(guidance)}", nameof(guidance));
        }
    }

    /// <summary>
    /// Random weights like the fixtures: every Linear ~ N(0, fan_in^-0.5), every RMSNorm scale ~ 1 + 0.1 N(0, 1); each
    /// tensor from its own generator (see <see cref="Flux2RandomCheckpoint.Parameter"/>), so it equals a random checkpoint of the same seed.
    /// </summary>
    public Flux2Transformer InitRandom(long seed)
    {
        using var noGrad = no_grad();
        foreach (var (name, p) in named_parameters())
        {
            using var r = Flux2RandomCheckpoint.Parameter(name, p.shape, p.dtype, seed);
            p.copy_(r);
        }
        return this;
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "img_in": img_in = layer; break;
            case "txt_in": txt_in = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}
