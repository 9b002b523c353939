using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace InferenceServer.Reliability;

/// <summary>
/// Valid images to mutate, one per format. PNG and GIF are written here (small encoders, so the harness needs no image
/// library); JPEG, WebP and AVIF are asked of the server under test (its own encoder's output), when it can make them.
/// </summary>
public sealed class ImageSamples
{
    public Dictionary<string, byte[]> ByFormat { get; } = [];

    public ImageSamples()
    {
        ByFormat["png"] = Png(64, 64, (x, y) => ((byte)(x * 4), (byte)(y * 4), (byte)((x ^ y) * 4)));
        ByFormat["gif"] = Gif(64, 64, (x, y) => (x + y) % 2);
    }

    public byte[] Valid => ByFormat["png"];

    /// <summary>The image mutations drawn (<see cref="ImageMutations.Default"/>, or <see cref="ImageMutations.Slow"/> with the real decompression bomb).</summary>
    public string[] Kinds { get; set; } = ImageMutations.Default;

    /// <summary>An RGB 8-bit PNG (filter 0 on each row, one IDAT).</summary>
    public static byte[] Png(int width, int height, Func<int, int, (byte R, byte G, byte B)> pixel)
    {
        var raw = new MemoryStream();
        for (int y = 0; y < height; y++)
        {
            raw.WriteByte(0);
            for (int x = 0; x < width; x++) { var (r, g, b) = pixel(x, y); raw.WriteByte(r); raw.WriteByte(g); raw.WriteByte(b); }
        }
        var z = new MemoryStream();
        using (var zlib = new ZLibStream(z, CompressionLevel.Optimal, leaveOpen: true)) raw.WriteTo(zlib);
        return PngFile(Ihdr(width, height), z.ToArray());
    }

    /// <summary>IHDR data: width, height, bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace.</summary>
    public static byte[] Ihdr(uint width, uint height)
    {
        var d = new byte[13];
        BinaryPrimitives.WriteUInt32BigEndian(d, width);
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(4), height);
        d[8] = 8; d[9] = 2;
        return d;
    }

    static byte[] Ihdr(int width, int height) => Ihdr((uint)width, (uint)height);

    /// <summary>Signature, IHDR, IDAT, IEND with correct CRCs: a well-formed container around any IHDR and IDAT.</summary>
    public static byte[] PngFile(byte[] ihdr, byte[] idat)
    {
        var s = new MemoryStream();
        s.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        Chunk(s, "IHDR", ihdr);
        Chunk(s, "IDAT", idat);
        Chunk(s, "IEND", []);
        return s.ToArray();
    }

    public static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(len, (uint)data.Length);
        s.Write(len);
        var typed = Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        s.Write(typed);
        BinaryPrimitives.WriteUInt32BigEndian(len, Crc32(typed));
        s.Write(len);
    }

    static readonly uint[] CrcTable = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    /// <summary>The CRC-32 of PNG chunks (ISO 3309, reflected, polynomial 0xEDB88320).</summary>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (byte b in data) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }

    /// <summary>
    /// A two-colour GIF89a. The LZW stream uses 3-bit codes and a clear code every two pixels, so the code table never
    /// grows past 3 bits: a valid stream without a full LZW encoder.
    /// </summary>
    public static byte[] Gif(int width, int height, Func<int, int, int> index, ushort screenWidth = 0, ushort screenHeight = 0)
    {
        var s = new MemoryStream();
        s.Write("GIF89a"u8);
        void U16(int v) { s.WriteByte((byte)v); s.WriteByte((byte)(v >> 8)); }   // little-endian
        U16(screenWidth == 0 ? width : screenWidth); U16(screenHeight == 0 ? height : screenHeight);
        s.Write([0x80, 0, 0]);                     // global colour table of 2 entries
        s.Write([0, 0, 0, 255, 255, 255]);
        s.WriteByte(0x2C); U16(0); U16(0); U16(width); U16(height); s.WriteByte(0);
        s.WriteByte(2);                            // LZW minimum code size: clear = 4, end = 5
        var bits = new List<bool>();
        void Code(int c) { for (int i = 0; i < 3; i++) bits.Add(((c >> i) & 1) != 0); }
        int n = 0;
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                if (n++ % 2 == 0) Code(4);
                Code(index(x, y) & 1);
            }
        Code(5);
        var packed = new byte[(bits.Count + 7) / 8];
        for (int i = 0; i < bits.Count; i++) if (bits[i]) packed[i / 8] |= (byte)(1 << (i % 8));
        for (int i = 0; i < packed.Length; i += 255)
        {
            int len = Math.Min(255, packed.Length - i);
            s.WriteByte((byte)len);
            s.Write(packed, i, len);
        }
        s.WriteByte(0);
        s.WriteByte(0x3B);
        return s.ToArray();
    }

    /// <summary>Asks the server for a small image in each of its other output formats (b64_json); formats it cannot make are skipped.</summary>
    public async Task AddFromServerAsync(HttpClient http, string? apiKey, CancellationToken ct)
    {
        foreach (string format in new[] { "jpeg", "webp", "avif" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/images/generations")
            {
                Content = new StringContent($$"""{"prompt":"sample","size":"64x64","steps":1,"seed":3,"response_format":"b64_json","output_format":"{{format}}"}""",
                    Encoding.UTF8, "application/json"),
            };
            if (apiKey is not null) request.Headers.Authorization = new("Bearer", apiKey);
            try
            {
                using var response = await http.SendAsync(request, ct).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode) continue;
                using var doc = System.Text.Json.JsonDocument.Parse(await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false));
                ByFormat[format] = Convert.FromBase64String(doc.RootElement.GetProperty("data")[0].GetProperty("b64_json").GetString()!);
            }
            catch (Exception e) when (e is HttpRequestException or System.Text.Json.JsonException or KeyNotFoundException or FormatException) { }
        }
    }
}
