using InferenceServer.Pipeline.Generation;

namespace InferenceServer.Tests.Generation;

public class SizeRequestTests
{
    static readonly SizeLimits Limits = new();

    [Theory]
    [InlineData("1024x768", null, null, 1024, 768)]
    [InlineData("1000x700", null, null, 1008, 704)]      // snapped to the nearest multiple of 16
    [InlineData("16:9", null, null, 1360, 768)]          // 1365x768 snapped
    [InlineData("4:3", null, "2K", 2368, 1776)]          // 2366x1774 snapped
    [InlineData(null, "1:1", "4K", 4096, 4096)]
    [InlineData(null, "9:16", "1K", 768, 1360)]
    [InlineData(null, "2.3:1", null, 1568, 672)]         // nearest supported: 21:9
    [InlineData(null, null, null, 1024, 1024)]           // t2i default
    [InlineData("auto", null, null, 1024, 1024)]         // auto without references: 1:1
    [InlineData("16:9", "1:1", null, 1360, 768)]         // size wins over aspect ratio
    public void Every_size_form_resolves_to_multiples_of_16(string? size, string? ratio, string? tier, int w, int h)
    {
        var (aw, ah) = new SizeRequest(size, ratio, tier).Resolve(Limits);
        Assert.Equal((w, h), (aw, ah));
        Assert.True(aw % 16 == 0 && ah % 16 == 0);
    }

    [Theory]
    [InlineData(800, 600, null, 1184, 880)]
    [InlineData(600, 800, "2K", 1776, 2368)]
    [InlineData(1920, 1080, null, 1360, 768)]
    public void Auto_takes_the_first_reference_aspect_ratio(int rw, int rh, string? tier, int w, int h) =>
        Assert.Equal((w, h), new SizeRequest("auto", null, tier).Resolve(Limits, (rw, rh)));

    [Theory]
    [InlineData("10x10", "64 to 4096")]
    [InlineData("5000x1000", "64 to 4096")]
    [InlineData("abc", "expected W:H")]
    [InlineData("0:1", "expected W:H")]
    [InlineData("12x", "expected WxH")]
    public void Bad_sizes_are_refused_with_a_clear_message(string size, string expected)
    {
        var e = Assert.Throws<RequestException>(() => new SizeRequest(size).Resolve(Limits));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Pixel_limit_and_tier_are_checked()
    {
        Assert.Contains("more than the limit", Assert.Throws<RequestException>(() => new SizeRequest("4096x4096").Resolve(Limits with { MaxPixels = 1 << 20 })).Message);
        Assert.Contains("1K, 2K or 4K", Assert.Throws<RequestException>(() => new SizeRequest(null, "1:1", "8K").Resolve(Limits)).Message);
    }
}
