using InferenceServer.Pipeline.Images;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Tests.Vae;

public class PixelsTests
{
    [Fact]
    public void To_u8_clamps_and_truncates_like_BFL_cli()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new float[] { -2f, -1f, -0.9999f, 0f, 0.5f, 0.9999f, 1f, 3f }).view(1, 1, 1, 8);
        var u8 = Pixels.ToU8(x);                                            // [1, 1, 8, 1]
        Assert.Equal(new long[] { 1, 1, 8, 1 }, u8.shape);
        Assert.Equal(new byte[] { 0, 0, 0, 127, 191, 254, 255, 255 }, u8.data<byte>().ToArray());
        Assert.Equal(new byte[] { 0, 0, 0, 128, 191, 255, 255, 255 }, Pixels.ToU8Diffusers(x).data<byte>().ToArray());
    }

    [Fact]
    public void Model_input_is_two_u8_over_255_minus_one_in_float32_and_channels_first()
    {
        using var scope = NewDisposeScope();
        var u8 = tensor(new byte[] { 0, 255, 128, 1, 2, 3 }).view(1, 1, 2, 3); // [B, H, W, C]
        var x = Pixels.ToModelInput(u8);
        Assert.Equal(new long[] { 1, 3, 1, 2 }, x.shape);
        Assert.Equal(new[] { -1f, 1f, 2f * (128f / 255f) - 1f, 2f * (1f / 255f) - 1f, 2f * (2f / 255f) - 1f, 2f * (3f / 255f) - 1f },
            x.permute(0, 2, 3, 1).flatten().data<float>().ToArray());
    }

    [Fact]
    public void Center_crop_box_is_BFLs_and_rejects_images_smaller_than_the_multiple()
    {
        Assert.Equal(new CropBox(4, 4, 32, 48), Pixels.CenterCropBox(40, 56));
        Assert.Equal(new CropBox(4, 7, 32, 48), Pixels.CenterCropBox(41, 63));
        Assert.Equal(new CropBox(0, 0, 48, 64), Pixels.CenterCropBox(48, 64));
        Assert.Throws<ArgumentException>(() => Pixels.CenterCropBox(15, 64));
        using var u8 = zeros([1, 40, 56, 3], ScalarType.Byte);
        using var cropped = Pixels.CenterCrop(u8);
        Assert.Equal(new long[] { 1, 32, 48, 3 }, cropped.shape);
        using var bad = zeros([1, 3, 40, 56]);
        Assert.Contains("u8: expected uint8 [B>0, H, W, C], got Float32 [1, 3, 40, 56]", Assert.Throws<ArgumentException>(() => Pixels.ToModelInput(bad)).Message);
    }
}
