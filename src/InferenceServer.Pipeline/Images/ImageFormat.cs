namespace InferenceServer.Pipeline.Images;

/// <summary>Output formats the server encodes. Inputs are a subset: <see cref="ImageCodec.AcceptedInputs"/>.</summary>
public enum ImageFormat { Png, Jpeg, Webp, Avif }

/// <summary>MIME types, file extensions and request-string parsing for <see cref="ImageFormat"/>.</summary>
public static class ImageFormats
{
    /// <summary>The names <see cref="Parse"/> accepts, for error messages.</summary>
    public const string Accepted = "png, jpeg (or jpg), webp, avif";

    public static string MimeType(this ImageFormat format) => format switch
    {
        ImageFormat.Png => "image/png",
        ImageFormat.Jpeg => "image/jpeg",
        ImageFormat.Webp => "image/webp",
        ImageFormat.Avif => "image/avif",
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, null),
    };

    /// <summary>File extension with the dot: ".png", ".jpg", ".webp", ".avif".</summary>
    public static string Extension(this ImageFormat format) => format switch
    {
        ImageFormat.Png => ".png",
        ImageFormat.Jpeg => ".jpg",
        ImageFormat.Webp => ".webp",
        ImageFormat.Avif => ".avif",
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, null),
    };

    /// <summary>Parses "png", "jpeg"/"jpg", "webp", "avif" (case-insensitive, surrounding spaces ignored).</summary>
    public static bool TryParse(string? text, out ImageFormat format)
    {
        ImageFormat? f = text?.Trim().ToLowerInvariant() switch
        {
            "png" => ImageFormat.Png,
            "jpeg" or "jpg" => ImageFormat.Jpeg,
            "webp" => ImageFormat.Webp,
            "avif" => ImageFormat.Avif,
            _ => null,
        };
        format = f.GetValueOrDefault();
        return f.HasValue;
    }

    /// <summary>Like <see cref="TryParse"/>, but an unknown name throws a <see cref="FormatException"/> listing the accepted ones.</summary>
    public static ImageFormat Parse(string? text) =>
        TryParse(text, out var f) ? f
            : throw new FormatException($"unsupported image format {Generation.ClientText.Quote(text)}: use one of {Accepted}");
}
