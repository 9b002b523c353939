namespace InferenceServer.Models.ZImage;

/// <summary>Multiply-add FLOPs of one Z-Image transformer forward (one sample), for the benchmark's TFLOP/s.</summary>
public static class ZImageFlops
{
    public const string Formula =
        "per block over its n tokens: 2 n (4 D^2 + 3 D F) linear + 4 n^2 D attention (QK^T and PV); noise_refiner blocks over the " +
        "padded image tokens, context_refiner over the padded caption rows, main layers over both; + embedders and final layer";

    /// <summary>(linear, attention) FLOPs with <paramref name="imageTokens"/> image tokens and <paramref name="captionTokens"/> caption rows (each padded to 32).</summary>
    public static (double Linear, double Attention) Forward(ZImageConfig c, long imageTokens, long captionTokens)
    {
        long img = Pad(imageTokens, c.SeqMultiOf), cap = Pad(captionTokens, c.SeqMultiOf), all = img + cap;
        double d = c.Dim, f = c.FfnHidden;
        double block = 2 * (4 * d * d + 3 * d * f);
        double linear = block * (c.NRefinerLayers * (img + cap) + c.NLayers * all)
            + 2.0 * img * c.PatchDim * d + 2.0 * cap * c.CapFeatDim * d + 2.0 * all * d * c.PatchDim;
        double attention = 4 * d * (c.NRefinerLayers * ((double)img * img + (double)cap * cap) + c.NLayers * (double)all * all);
        return (linear, attention);
    }

    static long Pad(long n, int multiple) => (n + multiple - 1) / multiple * multiple;
}
