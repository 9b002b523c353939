using InferenceServer.Models.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2.Autoencoder;

/// <summary>How <see cref="Flux2Autoencoder.Decode"/> bounds its memory.</summary>
public sealed record VaeDecodeOptions
{
    /// <summary>8 GiB budget, automatic tiles, 8-latent-pixel (64 image pixels) overlap.</summary>
    public static VaeDecodeOptions Default { get; } = new();

    /// <summary>
    /// Activation memory one decoder pass may use, in bytes (see <see cref="AutoEncoderMemory.EstimateDecodeBytes"/>).
    /// Above it the batch is decoded one sample at a time, and if one sample is still too large, in tiles.
    /// </summary>
    public long MemoryBudgetBytes { get; init; } = 8L << 30;

    /// <summary>
    /// Tile side in latent pixels (image pixels / 8). Null: the largest tile whose estimate fits the budget, used only
    /// when the whole image does not fit. Set: always tile a latent larger than this (tests use it to force tiling).
    /// </summary>
    public int? TileSize { get; init; }

    /// <summary>Overlap of neighbouring tiles in latent pixels; the decoded overlap is cross-faded linearly.</summary>
    public int TileOverlap { get; init; } = 8;
}

/// <summary>
/// Activation-memory estimate of the decoder, from the config and the latent size. It walks the decoder stage by
/// stage and takes the largest number of elements alive at once under this implementation's freeing order:
/// a ResNet block holds its input, the normalised copy and its output (max(2 Cin + Cout, Cin + 2 Cout) per pixel),
/// an Upsample holds its input plus the upsampled tensor and the conv output (C/4 + 2C per output pixel); every
/// convolution may add a reordered copy of its input and output (oneDNN blocked layouts: + Cin + Cout).
/// Weights are not included. The figure scales with batch * pixels * element size; the largest stage is the
/// full-resolution part of the last up level (for FLUX.2: 256 -> 128 channels at the output size).
/// FLUX.2 shape, FP32, one image: 512^2 1.06 GiB, 1024^2 4.25 GiB, 2048^2 17 GiB, 4096^2 68 GiB (BF16 half).
/// Checked against peak RSS (VmHWM over the loaded model, <c>bench vae-memory</c>, CPU libtorch): 512^2 whole
/// measured +0.98 GiB vs 1.06 estimated; 1024^2 whole +3.54 vs 4.25; 1024^2 tiled (budget 1.5 GiB, 74-latent-px
/// tiles) +1.32 vs 1.42.
/// </summary>
public static class AutoEncoderMemory
{
    /// <summary>Peak decoder activation bytes for a latent <c>[batch, z, h, w]</c> computed with <paramref name="elementSize"/>-byte elements.</summary>
    public static long EstimateDecodeBytes(AutoEncoderConfig c, long batch, long h, long w, int elementSize)
    {
        double peak = 0;
        void Stage(double elementsPerPixel, long side) => peak = Math.Max(peak, elementsPerPixel * side);
        long px = h * w;                                                     // pixels at the current level
        long cIn = (long)c.Ch * c.ChMult[^1];
        Stage(c.ZChannels + cIn + (c.ZChannels + cIn), px);                  // conv_in
        Stage(3 * cIn + 2 * cIn, px);                                        // mid ResNet blocks
        Stage(9 * cIn, px);                                                  // mid attention (q, k, v, copies, output)
        for (int level = c.NumLevels - 1; level >= 0; level--)
        {
            long cOut = (long)c.Ch * c.ChMult[level];
            for (int j = 0; j < c.NumResBlocks + 1; j++)
            {
                Stage(Math.Max(2 * cIn + cOut, cIn + 2 * cOut) + cIn + cOut, px);
                cIn = cOut;
            }
            if (level != 0)
            {
                px *= 4;
                Stage(cIn / 4.0 + 2 * cIn + 2 * cIn, px);                    // input, upsampled, conv output, conv copies
            }
        }
        Stage(2 * cIn + c.OutCh + cIn + c.OutCh, px);                        // norm_out, conv_out
        if (elementSize < 4)                                                 // bf16: conv_out runs on a float32 copy (Decoder.OutputConvFloat32)
            Stage(cIn + 4.0 / elementSize * (2 * cIn + 2 * c.OutCh), px);    // bf16 input + float32 copy, output, conv copies
        return (long)(peak * batch * elementSize);
    }

    /// <summary>
    /// The largest square tile (latent pixels) whose estimate fits the budget: the whole latent if it fits, else
    /// shrinking by 1/8 down to the smallest useful tile, 2*overlap+1 (used even when that does not fit).
    /// </summary>
    public static int ChooseTile(AutoEncoderConfig c, long batch, long h, long w, int elementSize, VaeDecodeOptions o)
    {
        int min = 2 * o.TileOverlap + 1;
        int tile = Math.Max(min, (int)Math.Max(h, w));
        while (tile > min && AutoEncoderMemory.EstimateDecodeBytes(c, batch, Math.Min(h, tile), Math.Min(w, tile), elementSize) > o.MemoryBudgetBytes)
            tile = Math.Max(min, tile * 7 / 8);
        return tile;
    }
}

/// <summary>
/// A decoder <see cref="TiledDecoding"/> can split: FLUX.2's and the FLUX.1 AE of Z-Image share the decoder blocks,
/// so the same memory estimate and tiling serve both.
/// </summary>
internal interface ITileDecoder
{
    AutoEncoderConfig Config { get; }
    ScalarType ComputeType { get; }
    Device Device { get; }

    /// <summary>The decoder on one whole latent <c>[B, z, h, w]</c> -> float32 image <c>[B, out_ch, 8h, 8w]</c>.</summary>
    Tensor DecodeWhole(Tensor z);
}

/// <summary>Whole, per-sample or tiled decoding of a latent under a memory budget.</summary>
internal static class TiledDecoding
{
    public static Tensor Decode(ITileDecoder ae, Tensor z, VaeDecodeOptions o)
    {
        var c = ae.Config;
        long b = z.shape[0], h = z.shape[2], w = z.shape[3];
        int elementSize = ae.ComputeType.ElementSize();
        if (o.TileSize is { } forced)
            return forced >= h && forced >= w ? ae.DecodeWhole(z) : Tiled(ae, z, forced, o.TileOverlap);
        if (AutoEncoderMemory.EstimateDecodeBytes(c, b, h, w, elementSize) <= o.MemoryBudgetBytes) return ae.DecodeWhole(z);
        if (b > 1)
        {
            // Sliced: one sample at a time (GroupNorm is per sample, so the result is the same as a batched decode).
            using var scope = NewDisposeScope();
            var parts = Enumerable.Range(0, (int)b).Select(i => Decode(ae, z.narrow(0, i, 1), o)).ToArray();
            return cat(parts, 0).MoveToOuterDisposeScope();
        }
        return Tiled(ae, z, AutoEncoderMemory.ChooseTile(c, 1, h, w, elementSize, o), o.TileOverlap);
    }

    /// <summary>Decodes overlapping <paramref name="tile"/>-sized latent tiles and cross-fades them into one image.</summary>
    static Tensor Tiled(ITileDecoder ae, Tensor z, int tile, int overlap)
    {
        if (tile <= overlap) throw new ArgumentException($"tile size {tile} must exceed the overlap {overlap}");
        int f = ae.Config.DownFactor;
        long b = z.shape[0], h = z.shape[2], w = z.shape[3];
        var device = ae.Device;
        using var scope = NewDisposeScope();
        var sum = zeros([b, ae.Config.OutCh, h * f, w * f], ScalarType.Float32, device); // [B, 3, H, W]
        var weight = zeros([1, 1, h * f, w * f], ScalarType.Float32, device);             // [1, 1, H, W]
        foreach (var (top, th) in Spans(h, tile, overlap))
        foreach (var (left, tw) in Spans(w, tile, overlap))
        {
            ComputeCancellation.ThrowIfCancelled();
            using var inner = NewDisposeScope();
            var part = ae.DecodeWhole(z.narrow(2, top, th).narrow(3, left, tw)); // [B, 3, th*f, tw*f]
            var wy = Ramp(th * f, top > 0, top + th < h, overlap * f, device).view(-1, 1);
            var wx = Ramp(tw * f, left > 0, left + tw < w, overlap * f, device).view(1, -1);
            var wt = wy * wx;                                                // [th*f, tw*f]
            sum.narrow(2, top * f, th * f).narrow(3, left * f, tw * f).add_(part.mul_(wt));
            weight.narrow(2, top * f, th * f).narrow(3, left * f, tw * f).add_(wt);
        }
        return sum.div_(weight).MoveToOuterDisposeScope();
    }

    /// <summary>Tile starts and lengths along one axis: stride tile-overlap, the last tile flush with the end.</summary>
    internal static List<(long Start, long Length)> Spans(long length, long tile, long overlap)
    {
        if (length <= tile) return [(0, length)];
        var spans = new List<(long, long)>();
        for (long s = 0; s + tile < length; s += tile - overlap) spans.Add((s, tile));
        spans.Add((length - tile, tile));
        return spans;
    }

    /// <summary>1 inside, rising linearly over <paramref name="ramp"/> pixels at an edge shared with another tile.</summary>
    static Tensor Ramp(long n, bool fadeIn, bool fadeOut, long ramp, Device device)
    {
        var p = arange(n, ScalarType.Float32, device).add_(0.5);             // pixel centres
        var r = ones(n, ScalarType.Float32, device);
        if (fadeIn) r = minimum(r, p / ramp);
        if (fadeOut) r = minimum(r, (n - p) / ramp);
        return r;
    }
}
