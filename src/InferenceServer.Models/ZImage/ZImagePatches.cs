using static TorchSharp.torch;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// The transformer's 2x2 token view of the latents (official <c>patchify_and_embed</c> / <c>unpatchify</c>, F = 1):
/// token <c>h * (W/2) + w</c>, feature <c>ph * 32 + pw * 16 + c</c> for pixel (2h + ph, 2w + pw), channel c. Unlike FLUX
/// (<c>c * 4 + ph * 2 + pw</c>) the channel is the fastest index.
/// </summary>
public static class ZImagePatches
{
    /// <summary>[B, C, H, W] latents (H, W even) -> [B, (H/2)*(W/2), 4*C] tokens.</summary>
    public static Tensor Patchify(Tensor latents)
    {
        if (latents.dim() != 4 || latents.shape[2] % 2 != 0 || latents.shape[3] % 2 != 0)
            throw new ArgumentException($"latents must be [B, C, H, W] with even H and W, got [{string.Join(", ", latents.shape)}]", nameof(latents));
        long b = latents.shape[0], c = latents.shape[1], gh = latents.shape[2] / 2, gw = latents.shape[3] / 2;
        using var v = latents.view(b, c, gh, 2, gw, 2);           // [B, C, h, ph, w, pw]
        using var p = v.permute(0, 2, 4, 3, 5, 1);                // [B, h, w, ph, pw, C]
        return p.reshape(b, gh * gw, 4 * c);
    }

    /// <summary>[B, gridH*gridW, 4*C] tokens -> [B, C, 2*gridH, 2*gridW] latents (the exact inverse of <see cref="Patchify"/>).</summary>
    public static Tensor Unpatchify(Tensor tokens, long gridH, long gridW)
    {
        if (tokens.dim() != 3 || tokens.shape[1] != gridH * gridW || tokens.shape[2] % 4 != 0)
            throw new ArgumentException($"tokens must be [B, {gridH}*{gridW}, 4*C], got [{string.Join(", ", tokens.shape)}]", nameof(tokens));
        long b = tokens.shape[0], c = tokens.shape[2] / 4;
        using var v = tokens.view(b, gridH, gridW, 2, 2, c);      // [B, h, w, ph, pw, C]
        using var p = v.permute(0, 5, 1, 3, 2, 4);                // [B, C, h, ph, w, pw]
        return p.reshape(b, c, 2 * gridH, 2 * gridW);
    }
}
