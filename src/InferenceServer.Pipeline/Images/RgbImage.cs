namespace InferenceServer.Pipeline.Images;

/// <summary>An 8-bit sRGB image, rows top to bottom, pixels interleaved R, G, B (HWC): <c>Rgb.Length == Width * Height * 3</c>.</summary>
public sealed record RgbImage
{
    public RgbImage(int width, int height, byte[] rgb)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        if (rgb.LongLength != 3L * width * height)
            throw new ArgumentException($"{width}x{height} RGB needs {3L * width * height} bytes, got {rgb.LongLength}", nameof(rgb));
        (Width, Height, Rgb) = (width, height, rgb);
    }

    public int Width { get; }
    public int Height { get; }
    public byte[] Rgb { get; }

    /// <summary>The pixel at (x, y).</summary>
    public (byte R, byte G, byte B) this[int x, int y]
    {
        get { int i = (y * Width + x) * 3; return (Rgb[i], Rgb[i + 1], Rgb[i + 2]); }
    }
}

/// <summary>Encoded image bytes and their format.</summary>
public sealed record EncodedImage(byte[] Bytes, ImageFormat Format)
{
    public string MimeType => Format.MimeType();
}

/// <summary>What an input image's header says: its format and its upright size (EXIF orientation applied).</summary>
public sealed record ImageHeader(ImageFormat Format, int Width, int Height);
