using InferenceServer.Models.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Flux2;

// Building blocks of the FLUX.2 transformer. Field names are the BFL checkpoint keys (RegisterComponents turns
// them into `img_attn.qkv.weight`, `norm.query_norm.scale`, ...); LayerNorms without affine have no parameters
// and are applied functionally. Every Linear field is typed Module<Tensor, Tensor> and its holder implements ILinearHost,
// so weight quantization (WeightQuantizer.Swap) can put a QuantizedLinear of the same name in its place. Linears are
// invoked with call(), not forward(), so the hooks of per-request LoRA adapters (Lora.LoraRuntime) see them.

/// <summary>RMSNorm over the last dimension with a learned <c>scale</c>; statistics in float32 whatever the input dtype.</summary>
public sealed class RMSNorm : Module<Tensor, Tensor>
{
    readonly Parameter scale; // [dim]
    readonly double eps;

    public RMSNorm(long dim, double eps, Device? device = null, ScalarType? dtype = null) : base(nameof(RMSNorm))
    {
        scale = new Parameter(ones(dim, dtype: dtype, device: device), requires_grad: false);
        this.eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var s = NewDisposeScope();
        var xf = x.to(ScalarType.Float32);                               // [..., D] f32
        var rrms = (xf.square().mean([-1L], keepdim: true) + eps).rsqrt(); // [..., 1]
        return ((xf * rrms).to(x.dtype) * scale).MoveToOuterDisposeScope();
    }
}

/// <summary>Per-head QK RMSNorm (<c>query_norm</c>, <c>key_norm</c>); returns q, k in v's dtype.</summary>
public sealed class QKNorm : Module
{
    readonly RMSNorm query_norm;
    readonly RMSNorm key_norm;

    public QKNorm(long headDim, double eps, Device? device = null, ScalarType? dtype = null) : base(nameof(QKNorm))
    {
        query_norm = new RMSNorm(headDim, eps, device, dtype);
        key_norm = new RMSNorm(headDim, eps, device, dtype);
        RegisterComponents();
    }

    public (Tensor Q, Tensor K) forward(Tensor q, Tensor k, Tensor v) =>
        (query_norm.forward(q).to(v.dtype), key_norm.forward(k).to(v.dtype));
}

/// <summary>The attention projections of one stream of a double block: fused <c>qkv</c>, QK <c>norm</c>, output <c>proj</c>.</summary>
public sealed class SelfAttention : Module, ILinearHost
{
    internal Module<Tensor, Tensor> qkv;  // [3*hidden, hidden], rows [q | k | v], each (heads, head_dim)
    internal readonly QKNorm norm;
    internal Module<Tensor, Tensor> proj; // [hidden, hidden]

    public SelfAttention(long hidden, long heads, double eps, Device? device = null, ScalarType? dtype = null) : base(nameof(SelfAttention))
    {
        qkv = Linear(hidden, 3 * hidden, hasBias: false, device: device, dtype: dtype);
        norm = new QKNorm(hidden / heads, eps, device, dtype);
        proj = Linear(hidden, hidden, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "qkv": qkv = layer; break;
            case "proj": proj = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>SwiGLU MLP as BFL's <c>Sequential(Linear, SiLUActivation, Linear)</c>: keys <c>0.weight</c>, <c>2.weight</c>.</summary>
public sealed class SwiGluMlp : Module<Tensor, Tensor>, ILinearHost
{
    [ComponentName(Name = "0")] Module<Tensor, Tensor> linear_in;  // [2*mlp_hidden, hidden], rows [gate | up]
    [ComponentName(Name = "2")] Module<Tensor, Tensor> linear_out; // [hidden, mlp_hidden]

    public SwiGluMlp(long hidden, long mlpHidden, Device? device = null, ScalarType? dtype = null) : base(nameof(SwiGluMlp))
    {
        linear_in = Linear(hidden, 2 * mlpHidden, hasBias: false, device: device, dtype: dtype);
        linear_out = Linear(mlpHidden, hidden, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var s = NewDisposeScope();
        return linear_out.call(Flux2Math.SwiGlu(linear_in.call(x))).MoveToOuterDisposeScope();
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "0": linear_in = layer; break;
            case "2": linear_out = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>BFL <c>MLPEmbedder</c>: <c>out_layer(silu(in_layer(x)))</c>.</summary>
public sealed class MLPEmbedder : Module<Tensor, Tensor>, ILinearHost
{
    Module<Tensor, Tensor> in_layer;  // [hidden, in]
    Module<Tensor, Tensor> out_layer; // [hidden, hidden]

    public MLPEmbedder(long inDim, long hidden, Device? device = null, ScalarType? dtype = null) : base(nameof(MLPEmbedder))
    {
        in_layer = Linear(inDim, hidden, hasBias: false, device: device, dtype: dtype);
        out_layer = Linear(hidden, hidden, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h = functional.silu(in_layer.call(x));
        return out_layer.call(h);
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "in_layer": in_layer = layer; break;
            case "out_layer": out_layer = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>Shared modulation: <c>lin(silu(vec))</c> split into <c>multiplier</c> chunks of [B, 1, hidden].</summary>
public sealed class Modulation : Module, ILinearHost
{
    Module<Tensor, Tensor> lin; // [multiplier*hidden, hidden]
    readonly int multiplier;

    public Modulation(long hidden, int multiplier, Device? device = null, ScalarType? dtype = null) : base(nameof(Modulation))
    {
        lin = Linear(hidden, multiplier * hidden, hasBias: false, device: device, dtype: dtype);
        this.multiplier = multiplier;
        RegisterComponents();
    }

    /// <summary>The raw projection [B, multiplier*hidden].</summary>
    public Tensor Project(Tensor vec)
    {
        using var h = functional.silu(vec);
        return lin.call(h);
    }

    /// <summary>Chunks of the projection, each [B, 1, hidden]: (shift, scale, gate) x multiplier/3.</summary>
    public Tensor[] Chunks(Tensor projected) => projected.unsqueeze(1).chunk(multiplier, -1);

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "lin": lin = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>BFL <c>DoubleStreamBlock</c>: separate image/text weights, joint attention over [txt, img].</summary>
public sealed class DoubleStreamBlock : Module
{
    readonly SelfAttention img_attn;
    readonly SwiGluMlp img_mlp;
    readonly SelfAttention txt_attn;
    readonly SwiGluMlp txt_mlp;
    readonly long hidden, heads;
    readonly double lnEps;

    public DoubleStreamBlock(Flux2Config c, Device? device = null, ScalarType? dtype = null) : base(nameof(DoubleStreamBlock))
    {
        hidden = c.HiddenSize; heads = c.NumHeads; lnEps = c.LayerNormEps;
        img_attn = new SelfAttention(hidden, heads, c.RmsNormEps, device, dtype);
        img_mlp = new SwiGluMlp(hidden, c.MlpHiddenDim, device, dtype);
        txt_attn = new SelfAttention(hidden, heads, c.RmsNormEps, device, dtype);
        txt_mlp = new SwiGluMlp(hidden, c.MlpHiddenDim, device, dtype);
        RegisterComponents();
    }

    /// <param name="img">[B, Li, hidden]</param>
    /// <param name="txt">[B, Lt, hidden]</param>
    /// <param name="pe">[B, 1, Lt+Li, head_dim/2, 2, 2] RoPE rotations, text first.</param>
    /// <param name="modImg">6 x [B, 1, hidden]: shift1, scale1, gate1, shift2, scale2, gate2.</param>
    /// <param name="modTxt">Same for the text stream.</param>
    public (Tensor Img, Tensor Txt) forward(Tensor img, Tensor txt, Tensor pe, Tensor[] modImg, Tensor[] modTxt)
    {
        using var s = NewDisposeScope();
        long lt = txt.shape[1];
        var (iq, ik, iv) = Flux2Math.SplitQkv(img_attn.qkv.call(Flux2Math.Modulate(img, modImg[0], modImg[1], lnEps)), heads); // 3 x [B, H, Li, D]
        (iq, ik) = img_attn.norm.forward(iq, ik, iv);
        var (tq, tk, tv) = Flux2Math.SplitQkv(txt_attn.qkv.call(Flux2Math.Modulate(txt, modTxt[0], modTxt[1], lnEps)), heads); // 3 x [B, H, Lt, D]
        (tq, tk) = txt_attn.norm.forward(tq, tk, tv);
        var attn = Flux2Math.Attention(cat([tq, iq], 2), cat([tk, ik], 2), cat([tv, iv], 2), pe); // [B, Lt+Li, hidden]
        var txtAttn = attn[.., ..(int)lt];                                                       // [B, Lt, hidden]
        var imgAttn = attn[.., (int)lt..];                                                       // [B, Li, hidden]

        img = img + modImg[2] * img_attn.proj.call(imgAttn);
        img = img + modImg[5] * img_mlp.forward(Flux2Math.Modulate(img, modImg[3], modImg[4], lnEps));
        txt = txt + modTxt[2] * txt_attn.proj.call(txtAttn);
        txt = txt + modTxt[5] * txt_mlp.forward(Flux2Math.Modulate(txt, modTxt[3], modTxt[4], lnEps));
        return (img.MoveToOuterDisposeScope(), txt.MoveToOuterDisposeScope());
    }
}

/// <summary>BFL <c>SingleStreamBlock</c>: one fused <c>linear1</c> (qkv + SwiGLU gate/up), <c>linear2</c> on cat(attn, mlp).</summary>
public sealed class SingleStreamBlock : Module, ILinearHost
{
    Module<Tensor, Tensor> linear1; // [3*hidden + 2*mlp_hidden, hidden], rows [q | k | v | gate | up]
    Module<Tensor, Tensor> linear2; // [hidden, hidden + mlp_hidden]
    readonly QKNorm norm;
    readonly long hidden, heads;
    readonly double lnEps;

    public SingleStreamBlock(Flux2Config c, Device? device = null, ScalarType? dtype = null) : base(nameof(SingleStreamBlock))
    {
        hidden = c.HiddenSize; heads = c.NumHeads; lnEps = c.LayerNormEps;
        linear1 = Linear(hidden, 3 * hidden + 2L * c.MlpHiddenDim, hasBias: false, device: device, dtype: dtype);
        linear2 = Linear(hidden + c.MlpHiddenDim, hidden, hasBias: false, device: device, dtype: dtype);
        norm = new QKNorm(c.HeadDim, c.RmsNormEps, device, dtype);
        RegisterComponents();
    }

    /// <param name="x">[B, L, hidden] joint [txt, img] stream.</param>
    /// <param name="pe">[B, 1, L, head_dim/2, 2, 2]</param>
    /// <param name="mod">3 x [B, 1, hidden]: shift, scale, gate.</param>
    public Tensor forward(Tensor x, Tensor pe, Tensor[] mod)
    {
        using var s = NewDisposeScope();
        var h = linear1.call(Flux2Math.Modulate(x, mod[0], mod[1], lnEps)); // [B, L, 3*hidden + 2*mlp]
        var (q, k, v) = Flux2Math.SplitQkv(h[.., .., ..(int)(3 * hidden)], heads); // 3 x [B, H, L, D]
        (q, k) = norm.forward(q, k, v);
        var attn = Flux2Math.Attention(q, k, v, pe);                             // [B, L, hidden]
        var mlp = Flux2Math.SwiGlu(h[.., .., (int)(3 * hidden)..]);             // [B, L, mlp]
        return (x + mod[2] * linear2.call(cat([attn, mlp], 2))).MoveToOuterDisposeScope();
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "linear1": linear1 = layer; break;
            case "linear2": linear2 = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>Holds BFL's <c>adaLN_modulation = Sequential(SiLU, Linear)</c> so the linear's key is <c>adaLN_modulation.1.weight</c>.</summary>
public sealed class AdaLNModulation : Module<Tensor, Tensor>, ILinearHost
{
    [ComponentName(Name = "1")] Module<Tensor, Tensor> linear; // [2*hidden, hidden], rows [shift | scale]

    public AdaLNModulation(long hidden, Device? device = null, ScalarType? dtype = null) : base(nameof(AdaLNModulation))
    {
        linear = Linear(hidden, 2 * hidden, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor vec)
    {
        using var h = functional.silu(vec);
        return linear.call(h);
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "1": linear = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>BFL <c>LastLayer</c>: adaLN (shift, scale) from silu(vec), LayerNorm, <c>linear</c> to the output channels.</summary>
public sealed class LastLayer : Module, ILinearHost
{
    Module<Tensor, Tensor> linear; // [out, hidden]
    readonly AdaLNModulation adaLN_modulation;
    readonly double lnEps;

    public LastLayer(long hidden, long outChannels, double lnEps, Device? device = null, ScalarType? dtype = null) : base(nameof(LastLayer))
    {
        linear = Linear(hidden, outChannels, hasBias: false, device: device, dtype: dtype);
        adaLN_modulation = new AdaLNModulation(hidden, device, dtype);
        this.lnEps = lnEps;
        RegisterComponents();
    }

    /// <param name="x">[B, Li, hidden]</param>
    /// <param name="vec">[B, hidden]</param>
    public Tensor forward(Tensor x, Tensor vec)
    {
        using var s = NewDisposeScope();
        var mod = Flux2Math.RowWise(vec, adaLN_modulation.forward).unsqueeze(1).chunk(2, -1); // shift, scale: [B, 1, hidden]
        return linear.call(Flux2Math.Modulate(x, mod[0], mod[1], lnEps)).MoveToOuterDisposeScope();
    }

    void ILinearHost.ReplaceLinear(string name, Module<Tensor, Tensor> layer)
    {
        switch (name)
        {
            case "linear": linear = layer; break;
            default: throw LinearHost.Unknown(this, name);
        }
    }
}

/// <summary>The functional pieces shared by the blocks (BFL <c>attention</c>, <c>apply_rope</c>, <c>rope</c>, <c>timestep_embedding</c>).</summary>
public static class Flux2Math
{
    /// <summary>
    /// <paramref name="f"/> on each row of <paramref name="x"/> ([B, ...]) alone, results concatenated. For the [B, hidden]
    /// conditioning-vector linears: BLAS picks its kernel by M (FP32 CPU: gemv at M = 1, small-M and large-M GEMMs sum
    /// in different orders), so M = 1 for every B keeps a row's numbers independent of what else is in the batch.
    /// </summary>
    public static Tensor RowWise(Tensor x, Func<Tensor, Tensor> f)
    {
        if (x.shape[0] == 1) return f(x);
        using var s = NewDisposeScope();
        return cat(Enumerable.Range(0, (int)x.shape[0]).Select(i =>
        {
            using var row = Lora.LoraRows.Offset(i); // adapters hooked on f's linears see batch row i, not row 0
            return f(x[i..(i + 1)]);
        }).ToList(), 0).MoveToOuterDisposeScope();
    }

    /// <summary><c>(1 + scale) * LayerNorm(x) + shift</c>, LayerNorm without affine.</summary>
    public static Tensor Modulate(Tensor x, Tensor shift, Tensor scale, double eps)
    {
        using var s = NewDisposeScope();
        var n = functional.layer_norm(x, [x.shape[^1]], eps: eps); // [B, L, hidden]
        return ((1 + scale) * n + shift).MoveToOuterDisposeScope();
    }

    /// <summary><c>silu(a) * b</c> for <c>a, b = x.chunk(2, -1)</c>.</summary>
    public static Tensor SwiGlu(Tensor x)
    {
        using var s = NewDisposeScope();
        var ab = x.chunk(2, -1);
        return (functional.silu(ab[0]) * ab[1]).MoveToOuterDisposeScope();
    }

    /// <summary><c>B L (K H D) -> K B H L D</c>: the fused q/k/v rows, head-major.</summary>
    public static (Tensor Q, Tensor K, Tensor V) SplitQkv(Tensor qkv, long heads)
    {
        long b = qkv.shape[0], l = qkv.shape[1], d = qkv.shape[2] / (3 * heads);
        using var p = qkv.view(b, l, 3, heads, d).permute(2, 0, 3, 1, 4); // [3, B, H, L, D]
        return (p[0], p[1], p[2]);
    }

    /// <summary>RoPE on q and k, then softmax(q k^T / sqrt(D)) v; returns [B, L, H*D].</summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, Tensor pe)
    {
        using var s = NewDisposeScope();
        var x = functional.scaled_dot_product_attention(ApplyRope(q, pe), ApplyRope(k, pe), v); // [B, H, L, D]
        return x.permute(0, 2, 1, 3).flatten(2).MoveToOuterDisposeScope();
    }

    /// <summary>Rotates adjacent pairs (2i, 2i+1) by pe's 2x2 matrices, in float32; result in x's dtype.</summary>
    /// <param name="x">[B, H, L, D]</param>
    /// <param name="pe">[B, 1, L, D/2, 2, 2] float32</param>
    public static Tensor ApplyRope(Tensor x, Tensor pe)
    {
        using var s = NewDisposeScope();
        var xf = x.to(ScalarType.Float32).reshape(x.shape[0], x.shape[1], x.shape[2], -1, 1, 2); // [B, H, L, D/2, 1, 2]
        var o = pe.select(-1, 0) * xf.select(-1, 0) + pe.select(-1, 1) * xf.select(-1, 1);      // [B, H, L, D/2, 2]
        return o.reshape(x.shape).to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// BFL <c>EmbedND</c>: per-axis rotation matrices [[cos, -sin], [sin, cos]] for integer positions ids [B, L, n_axes];
    /// axis a owns axes_dim[a]/2 pairs with omega_k = theta^(-2k/axes_dim[a]). Angles in float64, table float32.
    /// Returns [B, 1, L, sum(axes_dim)/2, 2, 2].
    /// </summary>
    public static Tensor RopeTable(Tensor ids, IReadOnlyList<int> axesDim, double theta)
    {
        using var s = NewDisposeScope();
        var parts = new List<Tensor>();
        for (int a = 0; a < axesDim.Count; a++)
        {
            int d = axesDim[a];
            var pos = ids.select(-1, a).to(ScalarType.Float64).unsqueeze(-1);                     // [B, L, 1]
            var omega = pow(theta, arange(0, d, 2, ScalarType.Float64, ids.device) / d).reciprocal(); // [d/2]
            var ang = pos * omega;                                                                  // [B, L, d/2]
            var (c, sn) = (ang.cos(), ang.sin());
            parts.Add(stack([c, -sn, sn, c], -1).view(ang.shape[0], ang.shape[1], d / 2, 2, 2));   // [B, L, d/2, 2, 2]
        }
        return cat(parts, -3).to(ScalarType.Float32).unsqueeze(1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// BFL <c>timestep_embedding</c> in float32 with the reference op order:
    /// freqs = exp(-ln(max_period) * arange(half) / half), args = (time_factor * t) * freqs, [cos, sin]. Returns [B, dim] f32.
    /// </summary>
    public static Tensor TimestepEmbedding(Tensor t, int dim, double maxPeriod, double timeFactor)
    {
        using var s = NewDisposeScope();
        int half = dim / 2;
        var freqs = (arange(0, half, ScalarType.Float32, t.device) * -Math.Log(maxPeriod) / half).exp(); // [half]
        var args = (t.to(ScalarType.Float32) * timeFactor).unsqueeze(1) * freqs.unsqueeze(0);             // [B, half]
        return cat([args.cos(), args.sin()], -1).MoveToOuterDisposeScope();                               // [B, dim]
    }
}
