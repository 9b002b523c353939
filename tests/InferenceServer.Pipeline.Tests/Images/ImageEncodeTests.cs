using InferenceServer.Pipeline.Images;
using NetVips;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Tests.Images;

/// <summary>Round trips through every output format, quality behaviour, metadata, concurrency, format names.</summary>
public class ImageEncodeTests(ITestOutputHelper output)
{
    readonly ImageCodec codec = new();

    /// <summary>The codec's decode, except for AVIF, which it does not accept as input.</summary>
    RgbImage Decode(byte[] bytes, ImageFormat format) =>
        format == ImageFormat.Avif ? TestImages.DecodeWithLibvips(bytes) : codec.Decode(bytes);

    /// <summary>A smooth [3, H, W] tensor in [-1, 1], slightly out of range at the extremes (clamping is part of the step).</summary>
    static Tensor KnownTensor(int height, int width)
    {
        var y = linspace(-1, 1, height).view(1, height, 1);
        var x = linspace(-1, 1, width).view(1, 1, width);
        var c = arange(3).view(3, 1, 1).to(ScalarType.Float32);
        return (sin(3 * x + 2 * y + c) * 1.05f).to(ScalarType.Float32); // [3, H, W]
    }

    [Fact]
    public void Png_round_trip_of_a_tensor_is_exact()
    {
        using var scope = NewDisposeScope();
        var t = KnownTensor(48, 64);
        var encoded = ImageCodec.Encode(t, ImageFormat.Png);
        Assert.Equal("image/png", encoded.MimeType);
        var decoded = codec.Decode(encoded.Bytes);
        var expected = ImageTensors.ToRgbImage(t);
        Assert.Equal((64, 48), (decoded.Width, decoded.Height));
        Assert.Equal(expected.Rgb, decoded.Rgb);
        // And back to the model's range: within half a u8 step (1/255) plus truncation (another 1/127.5).
        var back = ImageTensors.ToTensor(decoded);
        Assert.True((back - t.clamp(-1, 1)).abs().max().item<float>() <= 1 / 127.5f + 1e-6f);
    }

    // Lower bounds on PSNR at quality 90 for the 128x96 test scene; measured JPEG 42.3, WebP 40.8, AVIF 42.5 dB.
    [Theory]
    [InlineData(ImageFormat.Jpeg, 38.0)]
    [InlineData(ImageFormat.Webp, 36.0)]
    [InlineData(ImageFormat.Avif, 36.0)]
    public void Lossy_round_trip_at_quality_90_is_close(ImageFormat format, double minPsnr)
    {
        var original = TestImages.Scene(128, 96);
        var encoded = ImageCodec.Encode(original, format, 90);
        var decoded = Decode(encoded.Bytes, format);
        double psnr = TestImages.Psnr(original, decoded);
        output.WriteLine($"{format} q90: {encoded.Bytes.Length} bytes, PSNR {psnr:F2} dB");
        Assert.True(psnr > minPsnr, $"{format} PSNR {psnr:F2} dB <= {minPsnr}");
        Assert.True(psnr < 100); // it is lossy
    }

    [Theory]
    [InlineData(ImageFormat.Jpeg)]
    [InlineData(ImageFormat.Webp)]
    [InlineData(ImageFormat.Avif)]
    public void Lower_quality_gives_a_smaller_file_and_lower_psnr(ImageFormat format)
    {
        var original = TestImages.Scene(128, 128);
        int[] qualities = [20, 50, 80, 95];
        var results = qualities.Select(q =>
        {
            var bytes = ImageCodec.Encode(original, format, q).Bytes;
            return (q, bytes.Length, psnr: TestImages.Psnr(original, Decode(bytes, format)));
        }).ToArray();
        foreach (var r in results) output.WriteLine($"{format} q{r.q}: {r.Length} bytes, {r.psnr:F2} dB");
        for (int i = 1; i < results.Length; i++)
        {
            Assert.True(results[i].Length > results[i - 1].Length, $"q{results[i].q} not larger than q{results[i - 1].q}");
            Assert.True(results[i].psnr > results[i - 1].psnr, $"q{results[i].q} not closer than q{results[i - 1].q}");
        }
    }

    [Fact]
    public void Png_quality_maps_to_zlib_level_and_stays_lossless()
    {
        Assert.Equal([9, 8, 5, 1, 0], new int?[] { 0, 10, 50, 90, 100 }.Select(ImageCodec.PngLevel));
        Assert.Equal(6, ImageCodec.PngLevel(null));
        var original = TestImages.Scene(96, 96, noise: 0);
        var stored = ImageCodec.Encode(original, ImageFormat.Png, 100).Bytes;
        var hardest = ImageCodec.Encode(original, ImageFormat.Png, 0).Bytes;
        output.WriteLine($"PNG level 0: {stored.Length} bytes, level 9: {hardest.Length} bytes");
        Assert.True(stored.Length > 96 * 96 * 3, "level 0 stores the pixels");
        Assert.True(hardest.Length < stored.Length / 2);
        Assert.Equal(original.Rgb, codec.Decode(stored).Rgb);
        Assert.Equal(original.Rgb, codec.Decode(hardest).Rgb);
    }

    [Theory]
    [InlineData(ImageFormat.Png, "image/png", ".png", "VipsForeignLoadPngBuffer")]
    [InlineData(ImageFormat.Jpeg, "image/jpeg", ".jpg", "VipsForeignLoadJpegBuffer")]
    [InlineData(ImageFormat.Webp, "image/webp", ".webp", "VipsForeignLoadWebpBuffer")]
    [InlineData(ImageFormat.Avif, "image/avif", ".avif", "VipsForeignLoadHeifBuffer")]
    public void Encoded_bytes_are_the_named_format_without_metadata(ImageFormat format, string mime, string ext, string loader)
    {
        var encoded = ImageCodec.Encode(TestImages.Scene(40, 24), format, 80);
        Assert.Equal((mime, ext), (encoded.MimeType, format.Extension()));
        Assert.Equal(loader, Image.FindLoadBuffer(encoded.Bytes));
        using var loaded = Image.NewFromBuffer(encoded.Bytes);
        Assert.Equal((40, 24, 3), (loaded.Width, loaded.Height, loaded.Bands));
        string[] metadata = ["exif-data", "xmp-data", "iptc-data", "icc-profile-data"];
        foreach (var m in metadata) Assert.False(loaded.Contains(m), m);
        if (format == ImageFormat.Avif) Assert.Equal("av1", loaded.Get("heif-compression"));
    }

    [Fact]
    public void Concurrent_encodes_and_decodes_match_serial_results()
    {
        var images = Enumerable.Range(0, 8).Select(i => TestImages.Scene(96 + 8 * i, 64, seed: i)).ToArray();
        var formats = Enum.GetValues<ImageFormat>();
        var serial = images.Select(im => formats.Select(f => ImageCodec.Encode(im, f, 85).Bytes).ToArray()).ToArray();
        var serialDecoded = serial.Select(row => row.Select((b, f) => Decode(b, formats[f]).Rgb).ToArray()).ToArray();

        int checkedCount = 0;
        Parallel.For(0, 64, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            int im = i % images.Length, f = i / images.Length % formats.Length;
            var bytes = ImageCodec.Encode(images[im], formats[f], 85).Bytes;
            Assert.Equal(serial[im][f], bytes); // encoders are deterministic
            Assert.Equal(serialDecoded[im][f], Decode(bytes, formats[f]).Rgb);
            Interlocked.Increment(ref checkedCount);
        });
        Assert.Equal(64, checkedCount);
    }

    [Theory]
    [InlineData("png", ImageFormat.Png)]
    [InlineData("PNG", ImageFormat.Png)]
    [InlineData("jpeg", ImageFormat.Jpeg)]
    [InlineData("JPG", ImageFormat.Jpeg)]
    [InlineData(" webp ", ImageFormat.Webp)]
    [InlineData("Avif", ImageFormat.Avif)]
    public void Format_names_parse_case_insensitively(string text, ImageFormat expected) =>
        Assert.Equal(expected, ImageFormats.Parse(text));

    [Theory]
    [InlineData("gif")]
    [InlineData("tiff")]
    [InlineData("")]
    [InlineData(null)]
    [InlineData("image/png")]
    public void Unknown_format_names_are_refused_with_the_accepted_list(string? text)
    {
        Assert.False(ImageFormats.TryParse(text, out _));
        var e = Assert.Throws<FormatException>(() => ImageFormats.Parse(text));
        Assert.Equal($"unsupported image format '{text}': use one of png, jpeg (or jpg), webp, avif", e.Message);
    }

    [Fact]
    public void Quality_outside_0_to_100_is_an_argument_error()
    {
        var img = TestImages.Scene(4, 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => ImageCodec.Encode(img, ImageFormat.Jpeg, 101));
        Assert.Throws<ArgumentOutOfRangeException>(() => ImageCodec.Encode(img, ImageFormat.Jpeg, -1));
        Assert.Equal([0xFF, 0xD8, 0xFF], ImageCodec.Encode(img, ImageFormat.Jpeg, 0).Bytes[..3]);
    }
}
