using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Images;

/// <summary>A crop rectangle in pixels: rows <c>[Top, Top+Height)</c>, columns <c>[Left, Left+Width)</c>.</summary>
public readonly record struct CropBox(int Top, int Left, int Height, int Width);

/// <summary>How decoded floats in [-1, 1] become u8 pixels: the models' references differ.</summary>
public enum PixelRounding
{
    /// <summary>BFL FLUX.2 cli.py: <c>clamp(-1, 1)</c>, then <c>(127.5*(x+1)).byte()</c>, which truncates (<see cref="Pixels.ToU8(Tensor)"/>).</summary>
    Truncate,

    /// <summary>
    /// diffusers <c>VaeImageProcessor.postprocess</c> and the official Z-Image <c>generate()</c>:
    /// <c>round(clamp(x/2 + 0.5, 0, 1) * 255)</c>, round half to even (<see cref="Pixels.ToU8Diffusers"/>).
    /// </summary>
    HalfToEven,
}

/// <summary>
/// Pixel conversions between uint8 RGB images <c>[B, H, W, 3]</c> and the autoencoder's float range, exactly as the
/// BFL reference does them (sampling.py <c>default_prep</c>, cli.py), as small pure functions on tensors.
/// </summary>
public static class Pixels
{
    /// <summary>uint8 <c>[B, H, W, C]</c> -> float32 <c>[B, C, H, W]</c> in [-1, 1]: <c>2*(u8/255) - 1</c>, float32 ops in that order (ToTensor, then 2x-1).</summary>
    public static Tensor ToModelInput(Tensor u8)
    {
        CheckU8(u8, nameof(u8));
        using var scope = NewDisposeScope();
        var x = u8.permute(0, 3, 1, 2).to(ScalarType.Float32).div_(255f);   // [B, C, H, W] in [0, 1]
        return x.mul_(2f).sub_(1f).contiguous().MoveToOuterDisposeScope();  // [B, C, H, W] in [-1, 1]
    }

    /// <summary>
    /// Decoded float <c>[B, C, H, W]</c> -> uint8 <c>[B, H, W, C]</c> as BFL cli.py: <c>clamp(-1, 1)</c>, then
    /// <c>(127.5*(x+1)).byte()</c> in float32, which truncates (no rounding).
    /// </summary>
    public static Tensor ToU8(Tensor decoded)
    {
        CheckDecoded(decoded, nameof(decoded));
        using var scope = NewDisposeScope();
        var x = decoded.to(ScalarType.Float32).clamp(-1f, 1f);              // [B, C, H, W]
        var v = x.add_(1f).mul_(127.5f);                                    // [0, 255]
        return v.to(ScalarType.Byte).permute(0, 2, 3, 1).contiguous().MoveToOuterDisposeScope(); // [B, H, W, C]
    }

    /// <summary>Decoded float <c>[B, C, H, W]</c> -> uint8 <c>[B, H, W, C]</c> with the given <paramref name="rounding"/>.</summary>
    public static Tensor ToU8(Tensor decoded, PixelRounding rounding) =>
        rounding == PixelRounding.HalfToEven ? ToU8Diffusers(decoded) : ToU8(decoded);

    /// <summary>
    /// Diffusers' <c>VaeImageProcessor.postprocess</c> rounding, which is also the official Z-Image pipeline's:
    /// <c>round(clamp(x*0.5+0.5, 0, 1)*255)</c> with round-half-even (x*0.5 == x/2 exactly). Differs from
    /// <see cref="ToU8(Tensor)"/> (FLUX.2) by one in many pixels.
    /// </summary>
    public static Tensor ToU8Diffusers(Tensor decoded)
    {
        CheckDecoded(decoded, nameof(decoded));
        using var scope = NewDisposeScope();
        var x = decoded.to(ScalarType.Float32).mul(0.5f).add_(0.5f).clamp_(0f, 1f).mul_(255f).round_(); // [B, C, H, W]
        return x.to(ScalarType.Byte).permute(0, 2, 3, 1).contiguous().MoveToOuterDisposeScope(); // [B, H, W, C]
    }

    /// <summary>BFL <c>center_crop_to_multiple_of_x</c>: each side down to a multiple, centred (the extra pixel goes bottom/right).</summary>
    public static CropBox CenterCropBox(int height, int width, int multiple = 16)
    {
        if (height < multiple || width < multiple)
            throw new ArgumentException($"image {width}x{height} is smaller than {multiple} pixels on a side; nothing is left after cropping to a multiple of {multiple}");
        int h = height / multiple * multiple, w = width / multiple * multiple;
        return new CropBox((height - h) / 2, (width - w) / 2, h, w);
    }

    /// <summary>Crops uint8 images <c>[B, H, W, C]</c> to <see cref="CenterCropBox"/> (a contiguous copy).</summary>
    public static Tensor CenterCrop(Tensor u8, int multiple = 16)
    {
        CheckU8(u8, nameof(u8));
        var box = CenterCropBox((int)u8.shape[1], (int)u8.shape[2], multiple);
        using var rows = u8.narrow(1, box.Top, box.Height);
        using var crop = rows.narrow(2, box.Left, box.Width);
        return crop.contiguous();                                           // [B, Hc, Wc, C]
    }

    static void CheckU8(Tensor u8, string name)
    {
        if (u8.dtype != ScalarType.Byte || u8.dim() != 4 || u8.shape[0] == 0 || u8.shape[1] == 0 || u8.shape[2] == 0 || u8.shape[3] == 0)
            throw new ArgumentException($"{name}: expected uint8 [B>0, H, W, C], got {u8.dtype} [{string.Join(", ", u8.shape)}]", name);
    }

    static void CheckDecoded(Tensor x, string name)
    {
        if (!x.is_floating_point() || x.dim() != 4 || x.shape[0] == 0)
            throw new ArgumentException($"{name}: expected floating-point [B>0, C, H, W], got {x.dtype} [{string.Join(", ", x.shape)}]", name);
    }
}
