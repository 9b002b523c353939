using InferenceServer.Tests.Shared;
using InferenceServer.Pipeline.Images;
using NetVips;

namespace InferenceServer.Pipeline.Tests.Images;

/// <summary>Bad inputs: each is one <see cref="ImageDecodeException"/> with the right reason and an actionable message.</summary>
[Collection(RunAlone.Name)]
public class ImageDecodeRefusalTests
{
    readonly ImageCodec codec = new();

    static ImageDecodeException Refused(ImageCodec codec, byte[] data, ImageDecodeError reason, params string[] mentions)
    {
        var e = Assert.Throws<ImageDecodeException>(() => codec.Decode(data));
        Assert.Equal(reason, e.Reason);
        foreach (var m in mentions) Assert.Contains(m, e.Message, StringComparison.OrdinalIgnoreCase);
        return e;
    }

    [Fact]
    public void Zero_bytes_are_empty() => Refused(codec, [], ImageDecodeError.Empty, "empty");

    [Fact]
    public void Random_bytes_are_an_unsupported_format()
    {
        var data = new byte[1000];
        new Random(7).NextBytes(data);
        data[0] = 0x42; // not accidentally a known magic number
        Refused(codec, data, ImageDecodeError.UnsupportedFormat, "unrecognised", "PNG, JPEG, WebP");
    }

    public static TheoryData<string, string> UnsupportedFormats => new()
    {
        { "gif", "GIF" }, { "tiff", "TIFF" }, { "avif", "AVIF" }, { "bmp", "BMP" }, { "svg", "SVG" }, { "pdf", "PDF" },
    };

    [Theory, MemberData(nameof(UnsupportedFormats))]
    public void Other_image_formats_are_refused_by_name(string kind, string name)
    {
        using var vips = TestImages.ToVips(TestImages.Scene(16, 16));
        byte[] data = kind switch
        {
            "gif" => vips.GifsaveBuffer(),
            "tiff" => vips.TiffsaveBuffer(),
            "avif" => vips.HeifsaveBuffer(compression: Enums.ForeignHeifCompression.Av1),
            // BITMAPFILEHEADER + BITMAPINFOHEADER of a 1x1 24-bit image.
            "bmp" => [(byte)'B', (byte)'M', 58, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 24, 0,
                      0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 0],
            "svg" => "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"8\" height=\"8\"/>"u8.ToArray(),
            _ => "%PDF-1.4\n%\u00e2\u00e3\n1 0 obj\n<<>>\nendobj\n"u8.ToArray(),
        };
        var e = Refused(codec, data, ImageDecodeError.UnsupportedFormat, name, "accepted formats are PNG, JPEG, WebP");
        Assert.StartsWith($"unsupported image format: {name};", e.Message);
    }

    [Theory]
    [InlineData(ImageFormat.Png)]
    [InlineData(ImageFormat.Jpeg)]
    [InlineData(ImageFormat.Webp)]
    public void Truncated_files_are_corrupt_not_grey(ImageFormat format)
    {
        var bytes = ImageCodec.Encode(TestImages.Noise(64, 64), format, 90).Bytes;
        Assert.NotNull(codec.Decode(bytes)); // the whole file is fine
        var e = Refused(codec, bytes[..(bytes.Length / 2)], ImageDecodeError.Corrupt, "damaged or truncated");
        Assert.IsType<VipsException>(e.InnerException);
    }

    [Fact]
    public void Png_with_valid_header_and_garbage_pixel_data_is_corrupt()
    {
        var garbage = new byte[200];
        new Random(3).NextBytes(garbage);
        Refused(codec, TestImages.Png(8, 8, 8, 2, [], idatOverride: garbage), ImageDecodeError.Corrupt, "PNG");
    }

    [Fact]
    public void Png_with_a_bad_checksum_is_corrupt()
    {
        var bytes = ImageCodec.Encode(TestImages.Scene(16, 16), ImageFormat.Png).Bytes;
        bytes[^20] ^= 0x55; // inside the last IDAT: its CRC no longer matches
        Refused(codec, bytes, ImageDecodeError.Corrupt, "PNG");
    }

    [Fact]
    public void Jpeg_with_only_a_header_is_corrupt()
    {
        var bytes = ImageCodec.Encode(TestImages.Scene(64, 64), ImageFormat.Jpeg).Bytes;
        int sos = IndexOf(bytes, [0xFF, 0xDA]); // start of scan: everything before it is header
        Refused(codec, bytes[..(sos + 2)], ImageDecodeError.Corrupt, "JPEG");
    }

    [Fact]
    public void Zero_width_png_is_refused()
    {
        var e = Assert.Throws<ImageDecodeException>(() => codec.Decode(TestImages.Png(0, 4, 8, 2, [])));
        Assert.Equal(ImageDecodeError.Corrupt, e.Reason); // libspng rejects the header itself
    }

    [Fact]
    public void Decompression_bomb_header_is_refused_before_decoding()
    {
        // A valid IHDR claiming 100000 x 100000 RGB (30 GB decoded) in a file of under 100 bytes.
        var bomb = TestImages.Png(100_000, 100_000, 8, 2, [], idatOverride: [0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        Assert.True(bomb.Length < 100);
        long before = GC.GetAllocatedBytesForCurrentThread();
        long rssBefore = Environment.WorkingSet;
        var e = Refused(codec, bomb, ImageDecodeError.TooLarge, "100000x100000", "10,000,000,000 pixels", "50,000,000");
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20);
        Assert.True(Environment.WorkingSet - rssBefore < 256L << 20, "no pixel buffer was allocated");
        Assert.Null(e.InnerException);
        Assert.Equal(ImageDecodeError.TooLarge, Assert.Throws<ImageDecodeException>(() => codec.ReadHeader(bomb)).Reason);
        // The header itself is fine: with a large enough limit it reads, and only decoding would find the missing pixels.
        Assert.Equal(new ImageHeader(ImageFormat.Png, 100_000, 100_000), new ImageCodec(new ImageLimits { MaxPixels = 10_000_000_000 }).ReadHeader(bomb));
    }

    [Theory]
    [InlineData(10, 10, true)]
    [InlineData(11, 10, false)]
    [InlineData(10, 11, false)]
    [InlineData(1, 100, true)]
    [InlineData(101, 1, false)]
    public void Configured_pixel_limit_is_exact(int width, int height, bool accepted)
    {
        var small = new ImageCodec(new ImageLimits { MaxPixels = 100 });
        foreach (var format in new[] { ImageFormat.Png, ImageFormat.Jpeg, ImageFormat.Webp })
        {
            var bytes = ImageCodec.Encode(TestImages.Scene(width, height), format).Bytes;
            if (accepted)
            {
                Assert.Equal((width, height), (small.Decode(bytes).Width, small.Decode(bytes).Height));
                Assert.Equal(new ImageHeader(format, width, height), small.ReadHeader(bytes));
            }
            else Refused(small, bytes, ImageDecodeError.TooLarge, $"{width}x{height}", "limit is 100 pixels");
        }
    }

    [Fact]
    public async Task Configured_byte_limit_applies_to_bytes_and_streams()
    {
        var bytes = ImageCodec.Encode(TestImages.Noise(32, 32), ImageFormat.Png).Bytes;
        var limited = new ImageCodec(new ImageLimits { MaxBytes = bytes.Length - 1 });
        Refused(limited, bytes, ImageDecodeError.TooLarge, "limit is");
        var e = await Assert.ThrowsAsync<ImageDecodeException>(() => limited.DecodeAsync(new MemoryStream(bytes)));
        Assert.Equal(ImageDecodeError.TooLarge, e.Reason);
        Assert.Equal(32, new ImageCodec(new ImageLimits { MaxBytes = bytes.Length }).Decode(bytes).Width);
    }

    [Fact]
    public void Many_bad_inputs_in_parallel_all_fail_cleanly()
    {
        var good = ImageCodec.Encode(TestImages.Noise(48, 48), ImageFormat.Jpeg).Bytes;
        int refused = 0;
        Parallel.For(0, 64, i =>
        {
            var cut = good[..(good.Length * (i % 8 + 1) / 10)];
            try { codec.Decode(cut); }
            catch (ImageDecodeException e) when (e.Reason == ImageDecodeError.Corrupt) { Interlocked.Increment(ref refused); }
        });
        Assert.Equal(64, refused);
    }

    static int IndexOf(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
            if (haystack.AsSpan(i, needle.Length).SequenceEqual(needle)) return i;
        return -1;
    }
}
