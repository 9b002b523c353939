namespace InferenceServer.Pipeline.Images;

/// <summary>Why an input image was refused; the server maps <see cref="TooLarge"/> to HTTP 413, the rest to 400.</summary>
public enum ImageDecodeError
{
    /// <summary>No bytes, or a header declaring zero pixels.</summary>
    Empty,
    /// <summary>A format other than PNG, JPEG or WebP (or not an image).</summary>
    UnsupportedFormat,
    /// <summary>Over <see cref="ImageLimits.MaxBytes"/> or <see cref="ImageLimits.MaxPixels"/> (checked before decoding).</summary>
    TooLarge,
    /// <summary>A supported format whose header or pixel data cannot be decoded (truncated, damaged).</summary>
    Corrupt,
}

/// <summary>
/// The one exception <see cref="ImageCodec"/> decoding throws for bad input; the message is meant for the client.
/// (Derives from <see cref="Exception"/>: <see cref="InvalidDataException"/> is sealed.)
/// </summary>
public sealed class ImageDecodeException(ImageDecodeError reason, string message, Exception? inner = null)
    : Exception(message, inner)
{
    public ImageDecodeError Reason { get; } = reason;
}
