namespace InferenceServer.Models.Flux2;

/// <summary>
/// Analytic floating-point operation count of one transformer forward (one sampler step), from the config alone.
/// <para>Formula (multiply-add = 2 FLOP; per batch element):</para>
/// <list type="bullet">
/// <item>Linears: 2 x (weights of the layer) x (tokens it is applied to). Double block: per stream
/// (qkv 3h^2 + proj h^2 + MLP 3hm) x that stream's tokens (image weights on the Li image/reference tokens, text weights
/// on the Lt text tokens); single block: (linear1 h(3h+2m) + linear2 (h+m)h) x L; <c>img_in</c> x Li, <c>txt_in</c> x Lt,
/// final <c>linear</c> x Li; the per-sample projections (time embedding, modulations, final adaLN) x 1.</item>
/// <item>Attention, per block (double and single): QK^T 2 L^2 h + AV 2 L^2 h = 4 L^2 h, L = Lt + Li.</item>
/// </list>
/// h = hidden size, m = MLP hidden size. Norms, RoPE, activations and the softmax are elementwise and not counted.
/// With klein-4B at 2048x2048 (16,384 image + 512 text tokens) this is about 2.2e14 FLOP per step, 9e14 for 4 steps.
/// </summary>
public static class Flux2Flops
{
    /// <summary>The formula as one line (written into benchmark reports).</summary>
    public const string Formula =
        "per step, per image: 2*[(4h^2+3hm)*(depth*(Li+Lt) + depth_single*(Li+Lt)) + in*h*Li + ctx*h*Lt + h*in*Li + per-sample projections] " +
        "+ 4*L^2*h*(depth + depth_single), L = Li + Lt; h hidden, m mlp hidden, Li image(+reference) tokens, Lt text tokens";

    /// <summary>FLOP of the linear layers of one forward for one batch element.</summary>
    public static double Linear(Flux2Config c, long imageTokens, long textTokens)
    {
        double h = c.HiddenSize, m = c.MlpHiddenDim, li = imageTokens, lt = textTokens, l = li + lt;
        double block = 4 * h * h + 3 * h * m;                    // qkv + proj + SwiGLU in/out = linear1 + linear2
        double tokens = c.Depth * (li + lt) + c.DepthSingleBlocks * l;
        double perSample = c.TimestepEmbedDim * h + h * h        // time_in
            + (c.UseGuidanceEmbed ? c.TimestepEmbedDim * h + h * h : 0)
            + (6 + 6 + 3) * h * h                                 // shared modulations
            + 2 * h * h;                                          // final adaLN
        return 2 * (block * tokens + c.InChannels * h * li + c.ContextInDim * h * lt + h * c.InChannels * li + perSample);
    }

    /// <summary>FLOP of the attention products (QK^T and AV) of one forward for one batch element.</summary>
    public static double Attention(Flux2Config c, long imageTokens, long textTokens)
    {
        double l = imageTokens + textTokens;
        return 4 * l * l * c.HiddenSize * (c.Depth + c.DepthSingleBlocks);
    }

    /// <summary>FLOP of one forward (one step) of <paramref name="batch"/> images.</summary>
    public static double Step(Flux2Config c, long imageTokens, long textTokens, int batch = 1) =>
        batch * (Linear(c, imageTokens, textTokens) + Attention(c, imageTokens, textTokens));
}
