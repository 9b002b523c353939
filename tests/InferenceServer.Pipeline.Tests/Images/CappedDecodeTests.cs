using InferenceServer.Pipeline.Images;
using NetVips;

namespace InferenceServer.Pipeline.Tests.Images;

/// <summary>
/// <see cref="ImageCodec.Decode(byte[], long)"/> decodes straight to the reference pixel cap: the same pixels as a whole
/// decode followed by the Lanczos resize the pipeline used before, for every input format and colour layout.
/// </summary>
public sealed class CappedDecodeTests
{
    readonly ImageCodec codec = new();

    public static TheoryData<string> Inputs => new() { "png-rgb", "png-grey-alpha", "jpeg", "webp", "jpeg-rotated" };

    static byte[] Encoded(string kind)
    {
        var scene = TestImages.Scene(300, 170, seed: 5);
        switch (kind)
        {
            case "png-rgb": return ImageCodec.Encode(scene, ImageFormat.Png).Bytes;
            case "jpeg": return ImageCodec.Encode(scene, ImageFormat.Jpeg, 92).Bytes;
            case "webp": return ImageCodec.Encode(scene, ImageFormat.Webp, 92).Bytes;
            case "png-grey-alpha":
            {
                using var vips = TestImages.ToVips(scene);
                using var grey = vips.Colourspace(Enums.Interpretation.Bw);
                using var alpha = grey.Bandjoin(128);
                return alpha.PngsaveBuffer();
            }
            default:
            {
                using var vips = TestImages.ToVips(scene);
                using var tagged = vips.Mutate(m => m.Set(GValue.GIntType, "orientation", 6));
                return tagged.JpegsaveBuffer(q: 92);
            }
        }
    }

    [Theory, MemberData(nameof(Inputs))]
    public void Capped_decode_equals_whole_decode_then_resize(string kind)
    {
        var bytes = Encoded(kind);
        var whole = codec.Decode(bytes);
        foreach (long cap in new[] { 100L * 100, 64L * 37, (long)whole.Width * whole.Height, 1L << 30 })
        {
            var (w, h) = ImageCodec.CappedSize(whole.Width, whole.Height, cap);
            var expected = ImageCodec.Resize(whole, w, h);
            var capped = codec.Decode(bytes, cap);
            Assert.Equal((w, h), (capped.Width, capped.Height));
            Assert.True(expected.Rgb.AsSpan().SequenceEqual(capped.Rgb), $"{kind}, cap {cap}: pixels differ from decode + resize");
            Assert.True((long)capped.Width * capped.Height <= cap);
        }
    }

    [Fact]
    public void Capped_size_scales_both_sides_by_the_square_root_and_truncates()
    {
        Assert.Equal((300, 170), ImageCodec.CappedSize(300, 170, 300 * 170));
        Assert.Equal((2024, 2024), ImageCodec.CappedSize(8192, 8192, 2024L * 2024));
        Assert.Equal((132, 75), ImageCodec.CappedSize(300, 170, 100 * 100));   // sqrt(10000 / 51000) = 0.4428...
        Assert.Equal((100, 1), ImageCodec.CappedSize(10000, 1, 1));           // each side at least 1, as BFL
    }
}
