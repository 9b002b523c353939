using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace InferenceServer.Models.Qwen3;

// Qwen3 building blocks with the Hugging Face parameter names (fields are named as the checkpoint keys).
// Weights are allocated uninitialised in their final dtype/device: they are always loaded from a checkpoint.

/// <summary>A bias-free linear layer whose <c>weight</c> is allocated, not initialised.</summary>
public sealed class Qwen3Linear : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight;

    public Qwen3Linear(long inFeatures, long outFeatures, ScalarType dtype, Device? device) : base(nameof(Qwen3Linear))
    {
        weight = new Parameter(empty(outFeatures, inFeatures, dtype: dtype, device: device), requires_grad: false); // [out, in]
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => nn.functional.linear(x, weight); // [..., in] -> [..., out]
}

/// <summary>Token embedding table <c>weight</c> [vocab, hidden].</summary>
public sealed class Qwen3Embedding : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight;

    public Qwen3Embedding(long vocab, long hidden, ScalarType dtype, Device? device) : base(nameof(Qwen3Embedding))
    {
        weight = new Parameter(empty(vocab, hidden, dtype: dtype, device: device), requires_grad: false); // [V, C]
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var rows = weight.index_select(0, ids.reshape(-1));             // [B*L, C]
        return rows.reshape([.. ids.shape, weight.shape[1]]).MoveToOuterDisposeScope(); // [B, L, C]
    }
}

/// <summary>RMSNorm over the last dimension, computed in float32: <c>w * (x / sqrt(mean(x^2) + eps))</c>.</summary>
public sealed class Qwen3RMSNorm : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight;
    readonly double eps;

    public Qwen3RMSNorm(long dim, double eps, ScalarType dtype, Device? device) : base(nameof(Qwen3RMSNorm))
    {
        weight = new Parameter(ones(dim, dtype: dtype, device: device), requires_grad: false); // [D]
        this.eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var x32 = x.to(ScalarType.Float32);                                   // [..., D]
        var normed = x32 * (x32.square().mean([-1], keepdim: true) + eps).rsqrt(); // [..., D]
        return (weight * normed.to(x.dtype)).MoveToOuterDisposeScope();                   // [..., D]
    }
}

/// <summary>Rotary position embedding, rotate-half form: <c>x*cos + rotate_half(x)*sin</c>.</summary>
public static class Qwen3Rope
{
    /// <summary>cos and sin tables [L, head_dim] for positions 0..L-1 (float32 angles, then <paramref name="dtype"/>).</summary>
    public static (Tensor Cos, Tensor Sin) Tables(long length, int headDim, double theta, ScalarType dtype, Device? device)
    {
        using var scope = NewDisposeScope();
        var exponent = arange(0, headDim, 2, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32) / headDim; // [D/2]
        var invFreq = 1.0f / tensor((float)theta, device: device).pow(exponent);                                        // [D/2]
        var freqs = outer(arange(length, dtype: ScalarType.Float32, device: device), invFreq);                         // [L, D/2]
        var emb = cat([freqs, freqs], -1);                                                                             // [L, D]
        return (emb.cos().to(dtype).MoveToOuterDisposeScope(), emb.sin().to(dtype).MoveToOuterDisposeScope());
    }

    /// <summary>Rotates [B, H, L, D] by the tables.</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var rotated = cat([-x[.., .., .., (int)half..], x[.., .., .., ..(int)half]], -1); // [B, H, L, D]
        return (x * cos + rotated * sin).MoveToOuterDisposeScope();
    }
}

/// <summary>Grouped-query self-attention with per-head RMSNorm on q and k (before RoPE), no biases.</summary>
public sealed class Qwen3Attention : nn.Module
{
    readonly Qwen3Linear q_proj, k_proj, v_proj, o_proj;
    readonly Qwen3RMSNorm q_norm, k_norm;
    readonly int heads, kvHeads, headDim;

    public Qwen3Attention(Qwen3Config c, ScalarType dtype, Device? device) : base(nameof(Qwen3Attention))
    {
        (heads, kvHeads, headDim) = (c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim);
        q_proj = new Qwen3Linear(c.HiddenSize, heads * headDim, dtype, device);
        k_proj = new Qwen3Linear(c.HiddenSize, kvHeads * headDim, dtype, device);
        v_proj = new Qwen3Linear(c.HiddenSize, kvHeads * headDim, dtype, device);
        o_proj = new Qwen3Linear(heads * headDim, c.HiddenSize, dtype, device);
        q_norm = new Qwen3RMSNorm(headDim, c.RmsNormEps, dtype, device);
        k_norm = new Qwen3RMSNorm(headDim, c.RmsNormEps, dtype, device);
        RegisterComponents();
    }

    /// <param name="x">[B, L, C]</param>
    /// <param name="cos">[L, D]</param>
    /// <param name="sin">[L, D]</param>
    /// <param name="allowed">[B, 1, L, L] bool: query may attend to key.</param>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor allowed)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], l = x.shape[1];
        var q = q_norm.call(q_proj.call(x).view(b, l, heads, headDim)).transpose(1, 2);   // [B, H, L, D]
        var k = k_norm.call(k_proj.call(x).view(b, l, kvHeads, headDim)).transpose(1, 2); // [B, KV, L, D]
        var v = v_proj.call(x).view(b, l, kvHeads, headDim).transpose(1, 2);              // [B, KV, L, D]
        q = Qwen3Rope.Apply(q, cos, sin);
        k = Qwen3Rope.Apply(k, cos, sin);
        if (heads != kvHeads)
        {
            k = k.repeat_interleave(heads / kvHeads, dim: 1); // [B, H, L, D]: query head h reads kv head h / (H/KV)
            v = v.repeat_interleave(heads / kvHeads, dim: 1); // [B, H, L, D]
        }
        var o = q.dtype == ScalarType.Float32
            ? nn.functional.scaled_dot_product_attention(q, k, v, allowed) // [B, H, L, D], scale D^-0.5
            : SoftmaxInFloat32(q, k, v, allowed);                          // [B, H, L, D]
        return o_proj.call(o.transpose(1, 2).reshape(b, l, heads * headDim)).MoveToOuterDisposeScope(); // [B, L, C]
    }

    /// <summary>Attention for half-precision weights as HF's eager path: scores and softmax in float32, then back.</summary>
    static Tensor SoftmaxInFloat32(Tensor q, Tensor k, Tensor v, Tensor allowed)
    {
        using var scope = NewDisposeScope();
        var scores = q.matmul(k.transpose(-2, -1)).to(ScalarType.Float32) * Math.Pow(q.shape[^1], -0.5); // [B, H, L, L]
        scores = scores.masked_fill(allowed.logical_not(), float.NegativeInfinity);
        return scores.softmax(-1).to(q.dtype).matmul(v).MoveToOuterDisposeScope();                    // [B, H, L, D]
    }
}

/// <summary>SwiGLU feed-forward: <c>down(silu(gate(x)) * up(x))</c>.</summary>
public sealed class Qwen3MLP : nn.Module<Tensor, Tensor>
{
    readonly Qwen3Linear gate_proj, up_proj, down_proj;

    public Qwen3MLP(Qwen3Config c, ScalarType dtype, Device? device) : base(nameof(Qwen3MLP))
    {
        gate_proj = new Qwen3Linear(c.HiddenSize, c.IntermediateSize, dtype, device);
        up_proj = new Qwen3Linear(c.HiddenSize, c.IntermediateSize, dtype, device);
        down_proj = new Qwen3Linear(c.IntermediateSize, c.HiddenSize, dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.silu(gate_proj.call(x)) * up_proj.call(x); // [B, L, I]
        return down_proj.call(h).MoveToOuterDisposeScope();                          // [B, L, C]
    }
}

/// <summary>One pre-norm decoder layer: <c>h = x + attn(norm(x)); out = h + mlp(norm(h))</c>.</summary>
public sealed class Qwen3DecoderLayer : nn.Module
{
    readonly Qwen3RMSNorm input_layernorm, post_attention_layernorm;
    readonly Qwen3Attention self_attn;
    readonly Qwen3MLP mlp;

    public Qwen3DecoderLayer(Qwen3Config c, ScalarType dtype, Device? device) : base(nameof(Qwen3DecoderLayer))
    {
        input_layernorm = new Qwen3RMSNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        self_attn = new Qwen3Attention(c, dtype, device);
        post_attention_layernorm = new Qwen3RMSNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        mlp = new Qwen3MLP(c, dtype, device);
        RegisterComponents();
    }

    /// <summary>[B, L, C] -> [B, L, C]; see <see cref="Qwen3Attention.forward"/> for the other inputs.</summary>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor allowed)
    {
        using var scope = NewDisposeScope();
        var h = x + self_attn.forward(input_layernorm.call(x), cos, sin, allowed); // [B, L, C]
        return (h + mlp.call(post_attention_layernorm.call(h))).MoveToOuterDisposeScope();   // [B, L, C]
    }
}

/// <summary>The decoder stack (<c>Qwen3Model</c>): embeddings, the first <c>layers.Count</c> layers, and the final norm when it is used.</summary>
public sealed class Qwen3Model : nn.Module
{
    readonly Qwen3Embedding embed_tokens;
    readonly ModuleList<Qwen3DecoderLayer> layers;
    readonly Qwen3RMSNorm? norm;

    public Qwen3Model(Qwen3Config c, int depth, bool withNorm, ScalarType dtype, Device? device) : base(nameof(Qwen3Model))
    {
        embed_tokens = new Qwen3Embedding(c.VocabSize, c.HiddenSize, dtype, device);
        layers = new ModuleList<Qwen3DecoderLayer>([.. Enumerable.Range(0, depth).Select(_ => new Qwen3DecoderLayer(c, dtype, device))]);
        if (withNorm) norm = new Qwen3RMSNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        RegisterComponents();
    }

    internal Qwen3Embedding Embed => embed_tokens;
    internal ModuleList<Qwen3DecoderLayer> Layers => layers;
    internal Qwen3RMSNorm? Norm => norm;
}
