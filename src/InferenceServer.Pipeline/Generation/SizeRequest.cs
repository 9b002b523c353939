using System.Globalization;

namespace InferenceServer.Pipeline.Generation;

/// <summary>Limits on output sizes. Sides are multiples of <see cref="Multiple"/> (16: 8x VAE, 2x2 patches).</summary>
public sealed record SizeLimits
{
    public int MinSide { get; init; } = 64;
    public int MaxSide { get; init; } = 4096;
    public long MaxPixels { get; init; } = 4096L * 4096;
    public int Multiple { get; init; } = 16;
}

/// <summary>
/// How the caller asks for the output size (Seedream surface): <c>"WxH"</c> exact pixels, <c>"W:H"</c> an aspect ratio,
/// <c>"auto"</c> (the first reference's aspect ratio; 1:1 without references), or an aspect ratio plus a resolution tier
/// (1K, 2K, 4K). A ratio is mapped to the nearest of the tier's shapes (REFERENCE.md's 1K table; 2K and 4K are the same
/// shapes with sides x2 and x4). Sides are snapped to the nearest multiple of 16; the actual size is reported.
/// </summary>
public sealed record SizeRequest(string? Size = null, string? AspectRatio = null, string? Resolution = null)
{
    /// <summary>The 1K tier: (ratio, width, height).</summary>
    public static readonly IReadOnlyList<(string Ratio, int Width, int Height)> Tier1K =
    [
        ("1:1", 1024, 1024), ("4:3", 1183, 887), ("3:4", 887, 1182), ("3:2", 1254, 836),
        ("2:3", 836, 1254), ("16:9", 1365, 768), ("9:16", 768, 1365), ("21:9", 1563, 670),
    ];

    /// <summary>Resolves to (width, height) in multiples of 16, or throws <see cref="ArgumentException"/> with one clear sentence.</summary>
    /// <param name="firstReference">Width and height of the first reference image, for <c>auto</c>.</param>
    public (int Width, int Height) Resolve(SizeLimits limits, (int Width, int Height)? firstReference = null)
    {
        int scale = TierScale(Resolution);
        string? size = Size?.Trim();
        (int W, int H) raw;
        if (!string.IsNullOrEmpty(size) && !size.Equals("auto", StringComparison.OrdinalIgnoreCase))
        {
            if (size.Contains('x', StringComparison.OrdinalIgnoreCase))
            {
                var parts = size.Split('x', 'X');
                if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int w)
                    || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int h))
                    throw new RequestException("size", $"size {ClientText.Quote(Size)}: expected WxH (e.g. 1024x768), W:H (e.g. 16:9) or auto");
                if (w < limits.MinSide || h < limits.MinSide || w > limits.MaxSide || h > limits.MaxSide)
                    throw new RequestException("size", $"size {w}x{h}: each side must be {limits.MinSide} to {limits.MaxSide} pixels");
                raw = (w, h);
            }
            else raw = FromRatio(ParseRatio(size, "size"), scale);
        }
        else if (!string.IsNullOrEmpty(AspectRatio)) raw = FromRatio(ParseRatio(AspectRatio, "aspect ratio"), scale);
        else if (firstReference is { } r) raw = FromRatio((double)r.Width / r.Height, scale);
        else raw = FromRatio(1, scale);

        int sw = Snap(raw.W, limits), sh = Snap(raw.H, limits);
        if ((long)sw * sh > limits.MaxPixels)
            throw new RequestException("size", $"size {sw}x{sh} has {(long)sw * sh:N0} pixels, more than the limit {limits.MaxPixels:N0}");
        return (sw, sh);
    }

    static int Snap(int v, SizeLimits l)
    {
        int s = (int)Math.Round(v / (double)l.Multiple, MidpointRounding.AwayFromZero) * l.Multiple;
        int min = (l.MinSide + l.Multiple - 1) / l.Multiple * l.Multiple, max = l.MaxSide / l.Multiple * l.Multiple;
        return Math.Clamp(s, min, max);
    }

    /// <summary>The nearest tier shape (in log ratio) scaled by the tier; an exact ratio off the table keeps the tier's area.</summary>
    static (int W, int H) FromRatio(double ratio, int scale)
    {
        var best = Tier1K.MinBy(t => Math.Abs(Math.Log((double)t.Width / t.Height) - Math.Log(ratio)));
        return (best.Width * scale, best.Height * scale);
    }

    static double ParseRatio(string text, string what)
    {
        var parts = text.Trim().Split(':');
        if (parts.Length == 2 && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double a)
            && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double b) && a > 0 && b > 0 && a / b is >= 1 / 16.0 and <= 16)
            return a / b;
        if (parts.Length == 1 && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double r) && r is >= 1 / 16.0 and <= 16)
            return r;
        throw new RequestException(what.Replace(' ', '_'), $"{what} {ClientText.Quote(text)}: expected W:H with positive numbers (e.g. 16:9), at most 16:1");
    }

    static int TierScale(string? tier) => tier?.Trim().ToUpperInvariant() switch
    {
        null or "" or "1K" => 1,
        "2K" => 2,
        "4K" => 4,
        _ => throw new RequestException("resolution", $"resolution {ClientText.Quote(tier)}: expected 1K, 2K or 4K"),
    };
}
