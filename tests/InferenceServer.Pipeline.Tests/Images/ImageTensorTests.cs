using InferenceServer.Pipeline.Images;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Tests.Images;

/// <summary>The u8 &lt;-> [-1, 1] conversions, value by value, and resize / crop.</summary>
public class ImageTensorTests
{
    [Fact]
    public void To_tensor_is_2_times_u8_over_255_minus_1_in_float32_for_every_value()
    {
        using var scope = NewDisposeScope();
        var rgb = Enumerable.Range(0, 256 * 3).Select(i => (byte)(i / 3 + i % 3 * 85)).ToArray(); // every value in R, shifted in G and B
        var t = ImageTensors.ToTensor(new RgbImage(256, 1, rgb));
        Assert.Equal(new long[] { 3, 1, 256 }, t.shape);
        Assert.Equal(ScalarType.Float32, t.dtype);
        var actual = t.permute(1, 2, 0).contiguous().data<float>().ToArray(); // back to HWC order
        // The reference's ops, in torch: ToTensor's .float().div(255), then 2 * x - 1.
        var u8 = tensor(rgb, [1, 256, 3], ScalarType.Byte);
        var expected = (2 * u8.to(ScalarType.Float32).div(255) - 1).flatten().data<float>().ToArray();
        Assert.Equal(expected, actual);
        Assert.Equal([-1f, 1f], new[] { actual[0], actual[255 * 3] });
    }

    [Fact]
    public void To_tensor_lays_out_channels_first()
    {
        using var scope = NewDisposeScope();
        // 3x2 image: pixel (x, y) = (R = 10x + y, G = 100, B = 255 - 10x).
        var rgb = new byte[3 * 2 * 3];
        for (int y = 0; y < 2; y++) for (int x = 0; x < 3; x++) { int i = (y * 3 + x) * 3; (rgb[i], rgb[i + 1], rgb[i + 2]) = ((byte)(10 * x + y), 100, (byte)(255 - 10 * x)); }
        var t = ImageTensors.ToTensor(new RgbImage(3, 2, rgb));
        Assert.Equal(new long[] { 3, 2, 3 }, t.shape);
        Assert.Equal(2f * (21 / 255f) - 1f, t[0, 1, 2].item<float>());
        Assert.Equal(2f * (100 / 255f) - 1f, t[1, 0, 1].item<float>());
        Assert.Equal(2f * (235 / 255f) - 1f, t[2, 1, 2].item<float>());
    }

    [Fact]
    public void To_uint8_clamps_then_truncates_127_5_times_x_plus_1()
    {
        using var scope = NewDisposeScope();
        float[] xs = [-5f, -1f, -0.99f, -0.5f, 0f, 0.0039f, 0.004f, 0.5f, 0.999f, 1f, 7f];
        var t = tensor(xs).view(1, 1, -1).expand(3, 1, -1).contiguous(); // [3, 1, N]
        var u8 = ImageTensors.ToUInt8Hwc(t);
        Assert.Equal(new long[] { 1, xs.Length, 3 }, u8.shape);
        var r = u8.data<byte>().ToArray().Where((_, i) => i % 3 == 0).ToArray();
        Assert.Equal(new byte[] { 0, 0, 1, 63, 127, 127, 128, 191, 254, 255, 255 }, r);
        Assert.Equal(xs.Select(x => (byte)((Math.Clamp(x, -1f, 1f) + 1f) * 127.5f)), r);
    }

    [Fact]
    public void To_uint8_accepts_a_batch_of_one_and_other_float_types()
    {
        using var scope = NewDisposeScope();
        var t = full(new long[] { 1, 3, 2, 2 }, 0.5f, ScalarType.BFloat16);
        var img = ImageTensors.ToRgbImage(t);
        Assert.Equal((2, 2), (img.Width, img.Height));
        Assert.All(img.Rgb, v => Assert.Equal(191, v));
        Assert.Throws<ArgumentException>(() => ImageTensors.ToUInt8Hwc(zeros(4, 2, 2)));
        Assert.Throws<ArgumentException>(() => ImageTensors.ToUInt8Hwc(zeros(2, 3, 2, 2)));
    }

    [Fact]
    public void U8_to_tensor_and_back_truncates_exactly_as_the_reference()
    {
        using var scope = NewDisposeScope();
        var rgb = Enumerable.Range(0, 256 * 3).Select(i => (byte)(i / 3)).ToArray();
        var back = ImageTensors.ToRgbImage(ImageTensors.ToTensor(new RgbImage(256, 1, rgb)));
        var expected = rgb.Select(v => (byte)((2f * (v / 255f) - 1f + 1f) * 127.5f)).ToArray();
        Assert.Equal(expected, back.Rgb);
        // Truncation loses one step wherever float32 rounding lands just below the integer: 63 of the 256 values
        // (1..20 among them), each one step down, never up.
        Assert.Equal(63 * 3, rgb.Zip(back.Rgb).Count(p => p.First != p.Second));
        Assert.All(rgb.Zip(back.Rgb), p => Assert.InRange(p.First - p.Second, 0, 1));
    }

    [Fact]
    public void Resize_gives_exact_sizes()
    {
        var img = TestImages.Scene(97, 61);
        foreach (var (w, h) in new[] { (48, 30), (1, 1), (96, 60), (33, 61), (97, 13), (200, 120), (64, 64) })
        {
            var r = ImageCodec.Resize(img, w, h);
            Assert.Equal((w, h, w * h * 3), (r.Width, r.Height, r.Rgb.Length));
        }
    }

    [Fact]
    public void Resize_keeps_a_flat_colour_and_the_mean_of_a_scene()
    {
        var flat = new RgbImage(64, 48, Enumerable.Repeat(new byte[] { 12, 130, 250 }, 64 * 48).SelectMany(p => p).ToArray());
        var small = ImageCodec.Resize(flat, 21, 17);
        Assert.Equal(Enumerable.Repeat(new byte[] { 12, 130, 250 }, 21 * 17).SelectMany(p => p), small.Rgb);

        var scene = TestImages.Scene(256, 256, noise: 0);
        var half = ImageCodec.Resize(scene, 128, 128);
        for (int c = 0; c < 3; c++)
            Assert.InRange(Mean(half, c) - Mean(scene, c), -0.5, 0.5);
        // A 2x Lanczos3 reduction of smooth content is close to the 2x2 box average.
        Assert.True(TestImages.Psnr(half, BoxHalf(scene)) > 38);
    }

    [Fact]
    public void Center_crop_takes_the_middle_rounding_offsets_down()
    {
        // 5x4 image whose pixel (x, y) is (x, y, 7).
        var rgb = new byte[5 * 4 * 3];
        for (int y = 0; y < 4; y++) for (int x = 0; x < 5; x++) { int i = (y * 5 + x) * 3; (rgb[i], rgb[i + 1], rgb[i + 2]) = ((byte)x, (byte)y, 7); }
        var crop = ImageCodec.CenterCrop(new RgbImage(5, 4, rgb), 2, 3); // offsets (1, 0)
        Assert.Equal(new byte[] { 1, 0, 7, 2, 0, 7, 1, 1, 7, 2, 1, 7, 1, 2, 7, 2, 2, 7 }, crop.Rgb);
        Assert.Throws<ArgumentOutOfRangeException>(() => ImageCodec.CenterCrop(new RgbImage(5, 4, rgb), 6, 4));
    }

    static double Mean(RgbImage img, int channel) => img.Rgb.Where((_, i) => i % 3 == channel).Average(v => (double)v);

    static RgbImage BoxHalf(RgbImage img)
    {
        int w = img.Width / 2, h = img.Height / 2;
        var rgb = new byte[w * h * 3];
        for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) for (int c = 0; c < 3; c++)
        {
            int s = img.Rgb[((2 * y) * img.Width + 2 * x) * 3 + c] + img.Rgb[((2 * y) * img.Width + 2 * x + 1) * 3 + c]
                  + img.Rgb[((2 * y + 1) * img.Width + 2 * x) * 3 + c] + img.Rgb[((2 * y + 1) * img.Width + 2 * x + 1) * 3 + c];
            rgb[(y * w + x) * 3 + c] = (byte)((s + 2) / 4);
        }
        return new RgbImage(w, h, rgb);
    }
}
