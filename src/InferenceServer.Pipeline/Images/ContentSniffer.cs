using System.Text;

namespace InferenceServer.Pipeline.Images;

/// <summary>Names an encoded image's format from its first bytes (magic numbers), so a refusal can say what it got.</summary>
static class ContentSniffer
{
    /// <summary>The accepted input format, or null with <paramref name="detected"/> naming what the bytes look like.</summary>
    public static ImageFormat? Identify(ReadOnlySpan<byte> b, out string detected)
    {
        (ImageFormat? format, detected) = b switch
        {
            [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => (ImageFormat.Png, "PNG"),
            [0xFF, 0xD8, 0xFF, ..] => (ImageFormat.Jpeg, "JPEG"),
            [(byte)'R', (byte)'I', (byte)'F', (byte)'F', _, _, _, _, (byte)'W', (byte)'E', (byte)'B', (byte)'P', ..] => (ImageFormat.Webp, "WebP"),
            _ => ((ImageFormat?)null, NameUnsupported(b)),
        };
        return format;
    }

    static string NameUnsupported(ReadOnlySpan<byte> b)
    {
        if (b.StartsWith("GIF8"u8)) return "GIF";
        if (b.StartsWith("BM"u8)) return "BMP";
        if (b.StartsWith("II*\0"u8) || b.StartsWith("MM\0*"u8)) return "TIFF";
        if (b.StartsWith("%PDF"u8)) return "PDF";
        if (b.StartsWith("8BPS"u8)) return "PSD";
        if (b.StartsWith((ReadOnlySpan<byte>)[0xFF, 0x0A]) || b.StartsWith("\0\0\0\x0CJXL "u8)) return "JPEG XL";
        if (b.StartsWith("\0\0\0\x0CjP  "u8)) return "JPEG 2000";
        if (b.StartsWith((ReadOnlySpan<byte>)[0, 0, 1, 0])) return "ICO";
        if (b.Length >= 12 && b[4..8].SequenceEqual("ftyp"u8))
        {
            var brand = Encoding.ASCII.GetString(b[8..12]);
            return brand is "avif" or "avis" ? "AVIF" : brand is "heic" or "heix" or "heim" or "heis" or "hevc" or "mif1" or "msf1" ? "HEIF" : $"ISO media ({brand.Trim()})";
        }
        var head = Encoding.ASCII.GetString(b[..Math.Min(b.Length, 256)]).TrimStart('\uFEFF', ' ', '\t', '\r', '\n');
        if (head.StartsWith("<svg", StringComparison.OrdinalIgnoreCase) || (head.StartsWith("<?xml", StringComparison.Ordinal) && head.Contains("<svg", StringComparison.OrdinalIgnoreCase)))
            return "SVG";
        if (head.StartsWith('<')) return "XML/HTML";
        return "unrecognised data";
    }
}
