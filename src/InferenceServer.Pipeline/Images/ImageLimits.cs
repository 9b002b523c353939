namespace InferenceServer.Pipeline.Images;

/// <summary>
/// What <see cref="ImageCodec"/> accepts as input. Bound from configuration; the defaults admit a 48 MP phone photo
/// (8064x6048 = 48.8 MP) and refuse decompression bombs before any pixel is decoded.
/// </summary>
public sealed record ImageLimits
{
    /// <summary>Largest width x height, checked from the header before decoding (50 MP: ~150 MB as RGB8).</summary>
    public long MaxPixels { get; init; } = 50_000_000;

    /// <summary>Largest encoded input, checked before parsing (50 MiB).</summary>
    public long MaxBytes { get; init; } = 50L << 20;

    /// <summary>
    /// How strict libvips is with damaged data. <see cref="NetVips.Enums.FailOn.Error"/> (default) refuses truncated
    /// files and decoder errors instead of returning grey fill, yet accepts files with mere warnings (common from cameras).
    /// </summary>
    public NetVips.Enums.FailOn FailOn { get; init; } = NetVips.Enums.FailOn.Error;
}
