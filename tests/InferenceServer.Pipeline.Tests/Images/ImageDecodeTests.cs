using InferenceServer.Pipeline.Images;
using NetVips;

namespace InferenceServer.Pipeline.Tests.Images;

/// <summary>Decoded pixel values of small hand-made images, colour conversions and EXIF orientation.</summary>
public class ImageDecodeTests
{
    readonly ImageCodec codec = new();

    static byte[][] Rows(params byte[][] rows) => rows;

    [Fact]
    public void Rgb_png_3x2_decodes_to_its_exact_pixels()
    {
        byte[] top = [255, 0, 0, 0, 255, 0, 0, 0, 255], bottom = [0, 0, 0, 128, 64, 32, 255, 255, 255];
        var img = codec.Decode(TestImages.Png(3, 2, 8, 2, Rows(top, bottom)));
        Assert.Equal((3, 2), (img.Width, img.Height));
        Assert.Equal([.. top, .. bottom], img.Rgb);
    }

    [Fact]
    public void Grey_png_decodes_to_equal_channels()
    {
        var img = codec.Decode(TestImages.Png(4, 1, 8, 0, Rows([0, 1, 128, 255])));
        Assert.Equal(new byte[] { 0, 0, 0, 1, 1, 1, 128, 128, 128, 255, 255, 255 }, img.Rgb);
    }

    [Fact]
    public void Palette_png_decodes_to_its_palette_colours()
    {
        byte[] plte = [10, 20, 30, 200, 100, 50, 0, 255, 7];
        var img = codec.Decode(TestImages.Png(3, 1, 8, 3, Rows([2, 0, 1]), plte));
        Assert.Equal(new byte[] { 0, 255, 7, 10, 20, 30, 200, 100, 50 }, img.Rgb);
    }

    [Fact]
    public void Palette_png_with_transparency_is_flattened_onto_white()
    {
        // Entry 0 is fully transparent, entry 1 opaque.
        var img = codec.Decode(TestImages.Png(2, 1, 8, 3, Rows([0, 1]), plte: [0, 0, 0, 40, 50, 60], trns: [0, 255]));
        Assert.Equal(new byte[] { 255, 255, 255, 40, 50, 60 }, img.Rgb);
    }

    [Fact]
    public void Sixteen_bit_png_keeps_the_high_byte()
    {
        // 257 * k is k in 8 bits under both truncation (>> 8) and rounding (/ 257).
        ushort[] v = [0, 257 * 1, 257 * 128, 257 * 200, 257 * 37, 65535];
        var row = v.SelectMany(x => new[] { (byte)(x >> 8), (byte)x }).ToArray();
        var img = codec.Decode(TestImages.Png(2, 1, 16, 2, Rows(row)));
        Assert.Equal(new byte[] { 0, 1, 128, 200, 37, 255 }, img.Rgb);
    }

    [Fact]
    public void Sixteen_bit_grey_png_decodes_to_8_bit_grey()
    {
        ushort[] v = [0, 257 * 99, 65535];
        var row = v.SelectMany(x => new[] { (byte)(x >> 8), (byte)x }).ToArray();
        var img = codec.Decode(TestImages.Png(3, 1, 16, 0, Rows(row)));
        Assert.Equal(new byte[] { 0, 0, 0, 99, 99, 99, 255, 255, 255 }, img.Rgb);
    }

    [Fact]
    public void Rgba_png_is_flattened_onto_white()
    {
        // alpha 255: the colour; 0: white; 51 (= 255/5): colour/5 + 204.
        byte[] row = [10, 20, 30, 255, 10, 20, 30, 0, 100, 0, 255, 51];
        var img = codec.Decode(TestImages.Png(3, 1, 8, 6, Rows(row)));
        Assert.Equal(new byte[] { 10, 20, 30, 255, 255, 255, 224, 204, 255 }, img.Rgb);
    }

    [Fact]
    public void Grey_alpha_png_is_flattened_onto_white()
    {
        var img = codec.Decode(TestImages.Png(2, 1, 8, 4, Rows([100, 255, 0, 51])));
        Assert.Equal(new byte[] { 100, 100, 100, 204, 204, 204 }, img.Rgb);
    }

    [Fact]
    public void Cmyk_jpeg_is_converted_to_srgb()
    {
        // Four 16x16 patches of in-gamut colours (grey, skin, olive, slate), converted to CMYK with libvips' built-in profile.
        byte[][] colours = [[128, 128, 128], [200, 150, 120], [110, 120, 60], [70, 90, 120]];
        var original = new RgbImage(32, 32, new byte[32 * 32 * 3]);
        for (int y = 0; y < 32; y++) for (int x = 0; x < 32; x++) colours[(y / 16) * 2 + x / 16].CopyTo(original.Rgb, (y * 32 + x) * 3);
        using var rgb = TestImages.ToVips(original);
        using var cmyk = rgb.IccTransform("cmyk", intent: Enums.Intent.Perceptual);
        var jpeg = cmyk.JpegsaveBuffer(q: 95);
        using (var stored = Image.NewFromBuffer(jpeg)) Assert.Equal((Enums.Interpretation.Cmyk, 4), (stored.Interpretation, stored.Bands));

        using var direct = cmyk.IccTransform("srgb", intent: Enums.Intent.Perceptual, depth: 8);
        var expected = new RgbImage(32, 32, direct.WriteToMemory<byte>()); // the same conversion without JPEG

        var decoded = codec.Decode(jpeg);

        Assert.Equal((32, 32), (decoded.Width, decoded.Height));
        for (int p = 0; p < 4; p++)
        {
            int x = p % 2 * 16 + 8, y = p / 2 * 16 + 8;
            var (r, g, b) = decoded[x, y];
            var (er, eg, eb) = expected[x, y];
            // JPEG at q95 on flat patches: within 3 of the direct conversion.
            Assert.True(Math.Abs(r - er) <= 3 && Math.Abs(g - eg) <= 3 && Math.Abs(b - eb) <= 3, $"patch {p}: decoded ({r}, {g}, {b}), direct ({er}, {eg}, {eb})");
            // sRGB -> CMYK -> sRGB through the built-in profile is not exact (measured: grey 128 -> 115, olive blue 60 -> 35),
            // but near the original.
            Assert.True(Math.Abs(r - colours[p][0]) <= 32 && Math.Abs(g - colours[p][1]) <= 32 && Math.Abs(b - colours[p][2]) <= 32,
                $"patch {p}: decoded ({r}, {g}, {b}), original ({string.Join(", ", colours[p])})");
        }
    }

    // Stored 64x32: quadrants TL red, TR green, BL blue, BR white. (orientation, expected size, expected TL, TR, BL, BR)
    public static TheoryData<int, int, int, string> Orientations => new()
    {
        { 1, 64, 32, "RGBW" },
        { 3, 64, 32, "WBGR" }, // rotated 180
        { 6, 32, 64, "BRWG" }, // rotated 90 clockwise
        { 8, 32, 64, "GWRB" }, // rotated 90 anticlockwise
    };

    [Theory, MemberData(nameof(Orientations))]
    public void Jpeg_exif_orientation_is_applied(int orientation, int width, int height, string corners)
    {
        var stored = new RgbImage(64, 32, new byte[64 * 32 * 3]);
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 64; x++)
            {
                (byte r, byte g, byte b) = (x < 32, y < 16) switch
                {
                    (true, true) => ((byte)255, (byte)0, (byte)0),
                    (false, true) => ((byte)0, (byte)255, (byte)0),
                    (true, false) => ((byte)0, (byte)0, (byte)255),
                    _ => ((byte)255, (byte)255, (byte)255),
                };
                int i = (y * 64 + x) * 3;
                (stored.Rgb[i], stored.Rgb[i + 1], stored.Rgb[i + 2]) = (r, g, b);
            }
        using var vips = TestImages.ToVips(stored);
        using var tagged = vips.Mutate(m => m.Set(GValue.GIntType, "orientation", orientation));
        var jpeg = tagged.JpegsaveBuffer(q: 95);

        var img = codec.Decode(jpeg);

        Assert.Equal((width, height), (img.Width, img.Height));
        int inset = 4;
        (byte R, byte G, byte B)[] px = [img[inset, inset], img[width - 1 - inset, inset], img[inset, height - 1 - inset], img[width - 1 - inset, height - 1 - inset]];
        var seen = new string(px.Select(Name).ToArray());
        Assert.Equal(corners, seen);
        Assert.Equal(new ImageHeader(ImageFormat.Jpeg, width, height), codec.ReadHeader(jpeg));
    }

    static char Name((byte R, byte G, byte B) p) => p switch
    {
        ( > 200, < 50, < 50) => 'R',
        ( < 50, > 200, < 50) => 'G',
        ( < 50, < 50, > 200) => 'B',
        ( > 200, > 200, > 200) => 'W',
        _ => '?',
    };

    [Fact]
    public void Interlaced_png_and_progressive_jpeg_decode_like_their_plain_forms()
    {
        var scene = TestImages.Scene(64, 48);
        using var vips = TestImages.ToVips(scene);
        Assert.Equal(scene.Rgb, codec.Decode(vips.PngsaveBuffer(interlace: true)).Rgb);
        var progressive = codec.Decode(vips.JpegsaveBuffer(q: 90, interlace: true));
        var baseline = codec.Decode(vips.JpegsaveBuffer(q: 90));
        Assert.Equal((64, 48), (progressive.Width, progressive.Height));
        Assert.True(TestImages.Psnr(progressive, baseline) > 45, $"{TestImages.Psnr(progressive, baseline):F1} dB");
    }

    [Theory]
    [InlineData(ImageFormat.Png)]
    [InlineData(ImageFormat.Jpeg)]
    [InlineData(ImageFormat.Webp)]
    public async Task Stream_and_file_helpers_decode_the_same_pixels(ImageFormat format)
    {
        var bytes = ImageCodec.Encode(TestImages.Scene(20, 10), format).Bytes;
        var fromBytes = codec.Decode(bytes);
        var fromStream = await codec.DecodeAsync(new MemoryStream(bytes));
        string path = Path.Combine(Path.GetTempPath(), $"codec-test-{Guid.NewGuid():N}{format.Extension()}");
        try
        {
            File.WriteAllBytes(path, bytes);
            Assert.Equal(fromBytes.Rgb, codec.DecodeFile(path).Rgb);
        }
        finally { File.Delete(path); }
        Assert.Equal(fromBytes.Rgb, fromStream.Rgb);
        Assert.Equal((20, 10), (fromBytes.Width, fromBytes.Height));
    }

    [Fact]
    public void Codec_turns_the_libvips_operation_cache_off()
    {
        _ = new ImageCodec();
        Assert.Equal(0, Cache.Max);
    }
}
