using InferenceServer.Models.Quantization;
using InferenceServer.Models.Flux2;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.ZImage;

// Building blocks of the Z-Image transformer. Field names (and [ComponentName]s where the checkpoint key is not a C#
// identifier: "0", "2-1") are the official/diffusers state-dict keys; fields are declared in the official module order so
// named_parameters() lists them as the released checkpoint does. Linear fields are typed Module<Tensor, Tensor> and the
// attention and feed-forward implement ILinearHost (as in Flux2Layers), so weight quantization can replace them (to_out.0 by
// its ModuleList index).

/// <summary>Official <c>RMSNorm</c> with a learned <c>weight</c>: <c>(x.float() * rsqrt(mean(x^2) + eps)).type_as(x) * weight</c>.</summary>
public sealed class ZImageRMSNorm : Module<Tensor, Tensor>
{
    readonly Parameter weight; // [dim]
    readonly double eps;

    public ZImageRMSNorm(long dim, double eps, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageRMSNorm))
    {
        weight = new Parameter(ones(dim, dtype: dtype, device: device), requires_grad: false);
        this.eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var s = NewDisposeScope();
        var xf = x.to(ScalarType.Float32);                                 // statistics in float32 whatever the dtype
        var rrms = (xf.square().mean([-1L], keepdim: true) + eps).rsqrt();
        return ((xf * rrms).to(x.dtype) * weight).MoveToOuterDisposeScope();
    }
}

/// <summary>Self-attention: <c>to_q/to_k/to_v</c>, per-head QK RMSNorm, interleaved RoPE, <c>to_out.0</c>; no biases.</summary>
public sealed class ZImageAttention : Module, ILinearHost
{
    Module<Tensor, Tensor> to_q;            // [dim, dim], output features head-major (heads, head_dim)
    Module<Tensor, Tensor> to_k;
    Module<Tensor, Tensor> to_v;
    readonly ModuleList<Module<Tensor, Tensor>> to_out; // diffusers' [Linear, Dropout]: only "0" has weights
    readonly ZImageRMSNorm norm_q;                    // [head_dim]
    readonly ZImageRMSNorm norm_k;
    readonly long heads;

    public ZImageAttention(ZImageConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageAttention))
    {
        heads = c.NHeads;
        to_q = Linear(c.Dim, c.Dim, hasBias: false, device: device, dtype: dtype);
        to_k = Linear(c.Dim, c.Dim, hasBias: false, device: device, dtype: dtype);
        to_v = Linear(c.Dim, c.Dim, hasBias: false, device: device, dtype: dtype);
        to_out = new ModuleList<Module<Tensor, Tensor>>(Linear(c.Dim, c.Dim, hasBias: false, device: device, dtype: dtype));
        norm_q = new ZImageRMSNorm(c.HeadDim, c.NormEps, device, dtype);
        norm_k = new ZImageRMSNorm(c.HeadDim, c.NormEps, device, dtype);
        RegisterComponents();
    }

    /// <param name="x">[B, L, dim]</param>
    /// <param name="freqs">[B, L, head_dim/2, 2] float32 (cos, sin) per complex pair.</param>
    /// <param name="mask">[B, 1, 1, L] bool, true = key takes part; null when no sample of the batch is padded.</param>
    public Tensor forward(Tensor x, Tensor freqs, Tensor? mask)
    {
        using var s = NewDisposeScope();
        long b = x.shape[0], l = x.shape[1];
        var q = ZImageMath.ApplyRope(norm_q.forward(to_q.call(x).view(b, l, heads, -1)), freqs); // [B, L, H, D]
        var k = ZImageMath.ApplyRope(norm_k.forward(to_k.call(x).view(b, l, heads, -1)), freqs);
        var v = to_v.call(x).view(b, l, heads, -1);
        var o = functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask: mask); // [B, H, L, D]
        return to_out[0].call(o.transpose(1, 2).reshape(b, l, -1)).MoveToOuterDisposeScope();
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "to_q": to_q = layer; break;
            case "to_k": to_k = layer; break;
            case "to_v": to_v = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>SwiGLU feed-forward <c>w2(silu(w1 x) * w3 x)</c>, hidden <c>int(dim/3*8)</c>, no biases.</summary>
public sealed class ZImageFeedForward : Module<Tensor, Tensor>, ILinearHost
{
    Module<Tensor, Tensor> w1; // [ffn, dim]
    Module<Tensor, Tensor> w2; // [dim, ffn]
    Module<Tensor, Tensor> w3; // [ffn, dim]

    public ZImageFeedForward(ZImageConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageFeedForward))
    {
        w1 = Linear(c.Dim, c.FfnHidden, hasBias: false, device: device, dtype: dtype);
        w2 = Linear(c.FfnHidden, c.Dim, hasBias: false, device: device, dtype: dtype);
        w3 = Linear(c.Dim, c.FfnHidden, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var s = NewDisposeScope();
        return w2.call(functional.silu(w1.call(x)) * w3.call(x)).MoveToOuterDisposeScope();
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "w1": w1 = layer; break;
            case "w2": w2 = layer; break;
            case "w3": w3 = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>
/// Official <c>ZImageTransformerBlock</c>: sandwich RMSNorms around attention and FFN. Modulated (noise_refiner, layers):
/// <c>adaLN_modulation.0(c)</c> -> scale_msa, gate_msa, scale_mlp, gate_mlp (c raw, no SiLU; scale-only, tanh gates, no shift).
/// Unmodulated (context_refiner): plain residuals and no adaLN weights.
/// </summary>
public sealed class ZImageBlock : Module
{
    readonly ZImageAttention attention;
    readonly ZImageFeedForward feed_forward;
    readonly ZImageRMSNorm attention_norm1;
    readonly ZImageRMSNorm ffn_norm1;
    readonly ZImageRMSNorm attention_norm2;
    readonly ZImageRMSNorm ffn_norm2;
    readonly ModuleList<Module<Tensor, Tensor>>? adaLN_modulation; // Sequential(Linear(adaln_dim, 4*dim, bias)) -> key "0"

    public ZImageBlock(ZImageConfig c, bool modulation, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageBlock))
    {
        attention = new ZImageAttention(c, device, dtype);
        feed_forward = new ZImageFeedForward(c, device, dtype);
        attention_norm1 = new ZImageRMSNorm(c.Dim, c.NormEps, device, dtype);
        ffn_norm1 = new ZImageRMSNorm(c.Dim, c.NormEps, device, dtype);
        attention_norm2 = new ZImageRMSNorm(c.Dim, c.NormEps, device, dtype);
        ffn_norm2 = new ZImageRMSNorm(c.Dim, c.NormEps, device, dtype);
        if (modulation)
            adaLN_modulation = new ModuleList<Module<Tensor, Tensor>>(Linear(c.AdalnDim, 4L * c.Dim, hasBias: true, device: device, dtype: dtype));
        RegisterComponents();
    }

    public bool Modulated => adaLN_modulation is not null;

    /// <summary>The raw modulation <c>adaLN_modulation.0(c)</c>: [B, 4*dim] (scale_msa, gate_msa, scale_mlp, gate_mlp), one row at a time (see <see cref="Flux2Math.RowWise"/>).</summary>
    public Tensor Modulation(Tensor c) => Flux2Math.RowWise(c, adaLN_modulation![0].call);

    /// <param name="x">[B, L, dim]</param>
    /// <param name="freqs">[B, L, head_dim/2, 2] float32.</param>
    /// <param name="mask">[B, 1, 1, L] bool key mask or null.</param>
    /// <param name="mod">[B, 4*dim] from <see cref="Modulation"/> (modulated blocks only).</param>
    public Tensor forward(Tensor x, Tensor freqs, Tensor? mask, Tensor? mod)
    {
        using var s = NewDisposeScope();
        if (mod is null)
        {
            x = x + attention_norm2.forward(attention.forward(attention_norm1.forward(x), freqs, mask));
            x = x + ffn_norm2.forward(feed_forward.forward(ffn_norm1.forward(x)));
            return x.MoveToOuterDisposeScope();
        }
        var m = mod.unsqueeze(1).chunk(4, -1); // 4 x [B, 1, dim]
        var (scaleMsa, gateMsa, scaleMlp, gateMlp) = (1 + m[0], m[1].tanh(), 1 + m[2], m[3].tanh());
        x = x + gateMsa * attention_norm2.forward(attention.forward(attention_norm1.forward(x) * scaleMsa, freqs, mask));
        x = x + gateMlp * ffn_norm2.forward(feed_forward.forward(ffn_norm1.forward(x) * scaleMlp));
        return x.MoveToOuterDisposeScope();
    }
}

/// <summary>Official <c>FinalLayer</c>: <c>linear(LayerNorm(x) * (1 + adaLN_modulation(c)))</c>, LayerNorm without affine, scale only.</summary>
public sealed class ZImageFinalLayer : Module
{
    readonly Module<Tensor, Tensor> linear;                      // [patch_dim, dim] + bias
    [ComponentName(Name = "adaLN_modulation")] readonly AdaLN adaLN; // Sequential(SiLU, Linear(adaln_dim, dim)) -> key "1"
    readonly double eps;

    public ZImageFinalLayer(ZImageConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageFinalLayer))
    {
        linear = Linear(c.Dim, c.PatchDim, hasBias: true, device: device, dtype: dtype);
        adaLN = new AdaLN(c.AdalnDim, c.Dim, device, dtype);
        eps = c.FinalLayerNormEps;
        RegisterComponents();
    }

    /// <summary>The raw scale <c>adaLN_modulation(c)</c> [B, dim] (before 1 +).</summary>
    public Tensor Scale(Tensor c) => Flux2Math.RowWise(c, adaLN.forward);

    /// <param name="x">[B, L, dim]</param>
    /// <param name="scale">[B, dim] from <see cref="Scale"/>.</param>
    public Tensor forward(Tensor x, Tensor scale)
    {
        using var s = NewDisposeScope();
        var n = functional.layer_norm(x, [x.shape[^1]], eps: eps);
        return linear.call(n * (1 + scale.unsqueeze(1))).MoveToOuterDisposeScope();
    }

    public sealed class AdaLN : Module<Tensor, Tensor>
    {
        [ComponentName(Name = "1")] readonly Module<Tensor, Tensor> linear;

        public AdaLN(long inDim, long dim, Device? device, ScalarType? dtype) : base(nameof(AdaLN))
        {
            linear = Linear(inDim, dim, hasBias: true, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor c)
        {
            using var h = functional.silu(c);
            return linear.call(h);
        }
    }
}

/// <summary>Official <c>TimestepEmbedder.mlp</c> = Sequential(Linear(256, 1024), SiLU, Linear(1024, adaln_dim)), keys "0" and "2".</summary>
public sealed class ZImageTimestepEmbedder : Module<Tensor, Tensor>
{
    [ComponentName(Name = "mlp")] readonly Mlp mlp;

    public ZImageTimestepEmbedder(ZImageConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageTimestepEmbedder))
    {
        mlp = new Mlp(c, device, dtype);
        RegisterComponents();
    }

    /// <param name="temb">[B, frequency_embedding_size] sinusoidal embedding in the module dtype.</param>
    public override Tensor forward(Tensor temb) => mlp.forward(temb);

    public sealed class Mlp : Module<Tensor, Tensor>
    {
        [ComponentName(Name = "0")] readonly Module<Tensor, Tensor> linear1;
        [ComponentName(Name = "2")] readonly Module<Tensor, Tensor> linear2;

        public Mlp(ZImageConfig c, Device? device, ScalarType? dtype) : base(nameof(Mlp))
        {
            linear1 = Linear(c.FrequencyEmbeddingSize, c.TEmbedderHidden, hasBias: true, device: device, dtype: dtype);
            linear2 = Linear(c.TEmbedderHidden, c.AdalnDim, hasBias: true, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var h = functional.silu(linear1.call(x));
            return linear2.call(h);
        }
    }
}

/// <summary>Official <c>cap_embedder</c> = Sequential(RMSNorm(cap_feat_dim), Linear(cap_feat_dim, dim, bias)).</summary>
public sealed class ZImageCaptionEmbedder : Module<Tensor, Tensor>
{
    [ComponentName(Name = "0")] readonly ZImageRMSNorm norm;
    [ComponentName(Name = "1")] readonly Module<Tensor, Tensor> linear;

    public ZImageCaptionEmbedder(ZImageConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(ZImageCaptionEmbedder))
    {
        norm = new ZImageRMSNorm(c.CapFeatDim, c.NormEps, device, dtype);
        linear = Linear(c.CapFeatDim, c.Dim, hasBias: true, device: device, dtype: dtype);
        RegisterComponents();
    }

    public Tensor Norm(Tensor x) => norm.forward(x);
    public Tensor Project(Tensor normed) => linear.call(normed);
    public override Tensor forward(Tensor x) { using var n = norm.forward(x); return linear.call(n); }
}

/// <summary>
/// The official <c>all_x_embedder</c> / <c>all_final_layer</c> ModuleDicts keyed <c>f"{patch}-{f_patch}"</c>; only "2-1" exists
/// in the release, so a one-entry holder gives the exact keys (<c>all_x_embedder.2-1.weight</c>).
/// </summary>
public sealed class ZImagePatchKeyed<T> : Module where T : Module
{
    [ComponentName(Name = "2-1")] readonly T entry;

    public ZImagePatchKeyed(T entry) : base("ModuleDict")
    {
        this.entry = entry;
        RegisterComponents();
    }

    public T Entry => entry;
}
