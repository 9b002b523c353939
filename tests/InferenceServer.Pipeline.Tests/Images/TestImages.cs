using System.Buffers.Binary;
using System.IO.Compression;
using InferenceServer.Pipeline.Images;
using NetVips;

namespace InferenceServer.Pipeline.Tests.Images;

/// <summary>Test inputs made on the spot: exact PNGs written chunk by chunk, and libvips-encoded images.</summary>
static class TestImages
{
    /// <summary>A PNG with the given IHDR fields and raw scanlines (filter byte 0 is prepended to each row).</summary>
    public static byte[] Png(int width, int height, byte bitDepth, byte colourType, byte[][] rows,
        byte[]? plte = null, byte[]? trns = null, byte[]? idatOverride = null)
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = bitDepth; ihdr[9] = colourType; // compression, filter, interlace: 0
        Chunk(ms, "IHDR", ihdr);
        if (plte is not null) Chunk(ms, "PLTE", plte);
        if (trns is not null) Chunk(ms, "tRNS", trns);
        Chunk(ms, "IDAT", idatOverride ?? Deflate(rows));
        Chunk(ms, "IEND", []);
        return ms.ToArray();
    }

    static byte[] Deflate(byte[][] rows)
    {
        using var ms = new MemoryStream();
        using (var z = new ZLibStream(ms, CompressionLevel.Optimal, leaveOpen: true))
            foreach (var row in rows) { z.WriteByte(0); z.Write(row); }
        return ms.ToArray();
    }

    static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        s.Write(word);
        var typed = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        s.Write(typed);
        BinaryPrimitives.WriteUInt32BigEndian(word, Crc32(typed));
        s.Write(word);
    }

    static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
        }
        return ~crc;
    }

    /// <summary>A smooth test scene (gradients and soft circles) with mild noise: realistic for lossy codecs.</summary>
    public static RgbImage Scene(int width, int height, int seed = 1, double noise = 6)
    {
        var rng = new Random(seed);
        var rgb = new byte[width * height * 3];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                double u = (double)x / width, v = (double)y / height;
                double disk = Math.Exp(-(Math.Pow(u - 0.6, 2) + Math.Pow(v - 0.4, 2)) * 18);
                double[] c = [220 * u + 30 * disk, 200 * v * (1 - disk) + 40, 120 + 100 * Math.Sin(6 * u + 3 * v) * (1 - disk)];
                for (int k = 0; k < 3; k++)
                    rgb[(y * width + x) * 3 + k] = (byte)Math.Clamp(Math.Round(c[k] + noise * (rng.NextDouble() - 0.5)), 0, 255);
            }
        return new RgbImage(width, height, rgb);
    }

    /// <summary>Uniformly random pixels (incompressible; for truncation tests).</summary>
    public static RgbImage Noise(int width, int height, int seed = 2)
    {
        var rgb = new byte[width * height * 3];
        new Random(seed).NextBytes(rgb);
        return new RgbImage(width, height, rgb);
    }

    /// <summary>A libvips image over the same bytes (3-band sRGB).</summary>
    public static Image ToVips(RgbImage image) =>
        Image.NewFromMemory(image.Rgb, image.Width, image.Height, 3, Enums.BandFormat.Uchar).Copy(interpretation: Enums.Interpretation.Srgb);

    /// <summary>Any format libvips reads (AVIF included, which the codec refuses as input) as RGB8, for checking outputs.</summary>
    public static RgbImage DecodeWithLibvips(byte[] data)
    {
        using var image = Image.NewFromBuffer(data);
        using var rgb = image.Colourspace(Enums.Interpretation.Srgb);
        Assert.Equal(3, rgb.Bands);
        return new RgbImage(rgb.Width, rgb.Height, rgb.WriteToMemory<byte>());
    }

    /// <summary>Peak signal-to-noise ratio in dB between two images of the same size.</summary>
    public static double Psnr(RgbImage a, RgbImage b)
    {
        Assert.Equal((a.Width, a.Height), (b.Width, b.Height));
        double se = 0;
        for (int i = 0; i < a.Rgb.Length; i++) { double d = a.Rgb[i] - b.Rgb[i]; se += d * d; }
        double mse = se / a.Rgb.Length;
        return mse == 0 ? double.PositiveInfinity : 10 * Math.Log10(255.0 * 255.0 / mse);
    }
}
