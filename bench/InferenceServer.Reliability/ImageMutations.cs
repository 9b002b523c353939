using System.Buffers.Binary;
using System.IO.Compression;

namespace InferenceServer.Reliability;

/// <summary>
/// Broken and hostile images made from valid samples: truncations, bit flips, garbage, wrong magic, and decompression
/// bombs (headers declaring huge dimensions over a few bytes of data, and one real 8000x8000 PNG of zeros that inflates
/// from ~200 KB to 192 MB, within the server's pixel limit).
/// </summary>
public static class ImageMutations
{
    static readonly Lazy<byte[]> zeroBomb = new(() =>
    {
        const int side = 8000;
        var z = new MemoryStream();
        using (var zlib = new ZLibStream(z, CompressionLevel.SmallestSize, leaveOpen: true))
        {
            var row = new byte[1 + side * 3];
            for (int y = 0; y < side; y++) zlib.Write(row);
        }
        return ImageSamples.PngFile(ImageSamples.Ihdr(side, side), z.ToArray());
    });

    /// <summary>
    /// The mutations a fuzz run draws from by default. "bomb-zeros" is left out unless asked for (<see cref="Slow"/>): the server
    /// accepts it (64 MP is within its pixel limit) and on a CPU its capped 4 MP reference takes a minute or more to encode,
    /// which is cost, not a defect; it belongs in a run that measures memory and deadlines, not in every CI run.
    /// </summary>
    public static readonly string[] Default =
        ["valid", "truncated", "bitflip", "header-only", "garbage", "empty", "wrong-magic", "bomb-declared", "png-bad-crc", "png-huge-chunk", "tiny-1x1"];

    public static readonly string[] Slow = [.. Default, "bomb-zeros"];

    /// <summary>One mutation of the sample of <paramref name="format"/>; returns the bytes and a description.</summary>
    public static (byte[] Bytes, string Name) Make(ImageSamples samples, string format, string kind, Random rng)
    {
        byte[] s = samples.ByFormat[format];
        switch (kind)
        {
            case "valid": return (s, $"{format} valid");
            case "truncated": { int n = rng.Next(1, s.Length); return (s[..n], $"{format} truncated to {n} of {s.Length} bytes"); }
            case "bitflip":
            {
                var b = (byte[])s.Clone();
                int flips = rng.Next(1, 9);
                for (int i = 0; i < flips; i++) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8));
                return (b, $"{format} with {flips} bit flips");
            }
            case "header-only": return (s[..Math.Min(s.Length, rng.Next(8, 40))], $"{format} header only");
            case "garbage": { var b = new byte[rng.Next(0, 4096)]; rng.NextBytes(b); return (b, $"{b.Length} random bytes"); }
            case "empty": return ([], "zero bytes");
            case "wrong-magic": { var b = (byte[])s.Clone(); b[0] ^= 0xFF; b[1] ^= 0x55; return (b, $"{format} with its magic broken"); }
            case "bomb-declared": return DeclaredBomb(samples, format, rng);
            case "bomb-zeros": return (zeroBomb.Value, "png 8000x8000 of zeros (192 MB decoded)");
            case "png-bad-crc": { var b = (byte[])samples.Valid.Clone(); b[29] ^= 1; return (b, "png with a wrong IHDR CRC"); }
            case "png-huge-chunk":
            {
                var b = (byte[])samples.Valid.Clone();
                BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(33), 0x7FFFFFF0);   // the IDAT length
                return (b, "png whose IDAT declares 2 GB");
            }
            case "tiny-1x1": return (ImageSamples.Png(1, 1, (_, _) => (1, 2, 3)), "png 1x1");
            default: throw new ArgumentOutOfRangeException(nameof(kind), kind, null);
        }
    }

    /// <summary>A header that declares enormous dimensions over a few bytes of pixel data, per container.</summary>
    static (byte[], string) DeclaredBomb(ImageSamples samples, string format, Random rng)
    {
        switch (format)
        {
            case "png":
            {
                (uint w, uint h) = rng.Next(3) switch { 0 => (100_000u, 100_000u), 1 => (1u, 0x7FFFFFFFu), _ => (0xFFFFFFFFu, 0xFFFFFFFFu) };
                return (ImageSamples.PngFile(ImageSamples.Ihdr(w, h), [0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]), $"png declaring {w}x{h}");
            }
            case "gif": return (ImageSamples.Gif(65535, 1, (_, _) => 0, 65535, 65535), "gif declaring 65535x65535");
            case "jpeg":
            {
                var b = (byte[])samples.ByFormat["jpeg"].Clone();
                for (int i = 2; i + 9 < b.Length; i++)
                    if (b[i] == 0xFF && b[i + 1] is 0xC0 or 0xC1 or 0xC2)
                    {
                        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(i + 5), 65500);   // height
                        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(i + 7), 65500);   // width
                        return (b, "jpeg whose SOF declares 65500x65500");
                    }
                return (b, "jpeg (no SOF found to patch)");
            }
            case "webp":
            {
                var b = (byte[])samples.ByFormat["webp"].Clone();
                string fourcc = System.Text.Encoding.ASCII.GetString(b, 12, 4);
                if (fourcc == "VP8 " && b.Length > 30) { BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(26), 0x3FFF); BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(28), 0x3FFF); }
                else if (fourcc == "VP8L" && b.Length > 25) { b[21] = b[22] = b[23] = 0xFF; b[24] |= 0x0F; }
                else if (fourcc == "VP8X" && b.Length > 30) { b[24] = b[25] = b[26] = b[27] = b[28] = b[29] = 0xFF; }
                return (b, $"webp ({fourcc.Trim()}) declaring 16384x16384");
            }
            default:
            {
                var b = (byte[])samples.ByFormat[format].Clone();
                for (int i = 0; i < 16 && i < b.Length; i++) b[b.Length / 4 + i % (b.Length / 2)] = 0xFF;
                return (b, $"{format} with its header bytes saturated");
            }
        }
    }
}
