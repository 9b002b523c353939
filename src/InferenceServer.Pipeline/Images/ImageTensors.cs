using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Images;

/// <summary>Conversions between <see cref="RgbImage"/> and the model's float pixel tensors in [-1, 1], as FLUX.2 does them.</summary>
public static class ImageTensors
{
    /// <summary>
    /// <c>[3, H, W]</c> float32 on the CPU: <c>2 * (u8 / 255) - 1</c>, each step in float32, exactly the reference's
    /// <c>2 * torchvision ToTensor()(img) - 1</c>. A u8 has 256 values, so this is a table look-up (one pass instead of
    /// five tensor ops); a test checks the table against those torch ops for every value.
    /// </summary>
    public static Tensor ToTensor(RgbImage image)
    {
        int hw = image.Width * image.Height;
        var result = empty([3, image.Height, image.Width], ScalarType.Float32); // [3, H, W], contiguous
        var chw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(result.bytes); // its native memory
        var rgb = image.Rgb;
        for (int i = 0; i < hw; i++)
        {
            chw[i] = UnitRange[rgb[3 * i]];
            chw[hw + i] = UnitRange[rgb[3 * i + 1]];
            chw[2 * hw + i] = UnitRange[rgb[3 * i + 2]];
        }
        return result;
    }

    /// <summary><c>2f * (v / 255f) - 1f</c> for every u8 value v: float32 division, product and difference, as torch computes them.</summary>
    static readonly float[] UnitRange = [.. Enumerable.Range(0, 256).Select(v => 2f * (v / 255f) - 1f)];

    /// <summary>
    /// The float -> u8 step of the reference's decode for one image: FLUX.2's by default (<see cref="Pixels.ToU8(Tensor)"/>:
    /// clamp, then <c>(127.5 * (x + 1)).byte()</c>); Z-Image's with <see cref="PixelRounding.HalfToEven"/>.
    /// Takes <c>[3, H, W]</c> or <c>[1, 3, H, W]</c> (any float dtype, any device); returns u8 <c>[H, W, 3]</c> on the CPU.
    /// </summary>
    public static Tensor ToUInt8Hwc(Tensor image, PixelRounding rounding = PixelRounding.Truncate)
    {
        if (!(image.dim() == 3 && image.shape[0] == 3) && !(image.dim() == 4 && image.shape[0] == 1 && image.shape[1] == 3))
            throw new ArgumentException($"expected [3, H, W] or [1, 3, H, W], got [{string.Join(", ", image.shape)}]", nameof(image));
        using var scope = NewDisposeScope();
        var batch = image.dim() == 3 ? image.unsqueeze(0) : image;               // [1, 3, H, W]
        return Pixels.ToU8(batch, rounding)[0].cpu().MoveToOuterDisposeScope();  // [H, W, 3]
    }

    /// <summary>A <c>[3, H, W]</c> / <c>[1, 3, H, W]</c> tensor in [-1, 1] as an image, through <see cref="ToUInt8Hwc"/>.</summary>
    public static RgbImage ToRgbImage(Tensor image, PixelRounding rounding = PixelRounding.Truncate)
    {
        using var u8 = ToUInt8Hwc(image, rounding);
        return new RgbImage((int)u8.shape[1], (int)u8.shape[0], u8.data<byte>().ToArray());
    }
}
