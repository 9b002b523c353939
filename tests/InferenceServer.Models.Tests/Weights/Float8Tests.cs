using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

public class Float8Tests
{
    [Theory]
    [InlineData(0x38, 1.0f)]
    [InlineData(0xB8, -1.0f)]
    [InlineData(0x7E, 448f)]
    [InlineData(0xFE, -448f)]
    [InlineData(0x01, 0.001953125f)]   // smallest subnormal 2^-9
    [InlineData(0x07, 0.013671875f)]   // largest subnormal 7 * 2^-9
    [InlineData(0x08, 0.015625f)]      // smallest normal 2^-6
    [InlineData(0x40, 2f)]
    [InlineData(0x00, 0f)]
    public void E4M3FN_decodes_known_codes(int code, float value) => Assert.Equal(value, Float8.Decode((byte)code, SafetensorsDType.F8_E4M3));

    [Theory]
    [InlineData(0x3C, 1.0f)]
    [InlineData(0x7B, 57344f)]
    [InlineData(0x01, 1.52587890625e-05f)] // smallest subnormal 2^-16
    [InlineData(0x04, 6.103515625e-05f)]   // smallest normal 2^-14
    [InlineData(0x7C, float.PositiveInfinity)]
    [InlineData(0xFC, float.NegativeInfinity)]
    public void E5M2_decodes_known_codes(int code, float value) => Assert.Equal(value, Float8.Decode((byte)code, SafetensorsDType.F8_E5M2));

    [Fact]
    public void NaN_codes_decode_to_NaN()
    {
        Assert.True(float.IsNaN(Float8.Decode(0x7F, SafetensorsDType.F8_E4M3)));
        Assert.True(float.IsNaN(Float8.Decode(0xFF, SafetensorsDType.F8_E4M3)));
        Assert.Equal(2, Enumerable.Range(0, 256).Count(b => float.IsNaN(Float8.Decode((byte)b, SafetensorsDType.F8_E4M3))));
        Assert.Equal(6, Enumerable.Range(0, 256).Count(b => float.IsNaN(Float8.Decode((byte)b, SafetensorsDType.F8_E5M2))));
        Assert.True(float.IsNaN(Float8.Decode(0x7D, SafetensorsDType.F8_E5M2)));
    }

    [Theory]
    [InlineData(SafetensorsDType.F8_E4M3)]
    [InlineData(SafetensorsDType.F8_E5M2)]
    public void Encoding_every_decoded_code_gives_the_code_back(SafetensorsDType format)
    {
        using var scope = NewDisposeScope();
        var codes = arange(256, dtype: ScalarType.Int64).to(ScalarType.Byte);
        var back = Float8.Encode(Float8.ToFloat32(codes, format), format).data<byte>().ToArray();
        for (int b = 0; b < 256; b++)
        {
            if (float.IsNaN(Float8.Decode((byte)b, format))) Assert.Equal(0x7F, back[b]);
            else Assert.Equal(b, back[b]);
        }
    }

    [Theory]
    // Halfway between 1.0 (0x38, even) and 1.125 (0x39): ties to even -> 1.0; halfway 1.125..1.25 -> 1.25 (0x3A).
    [InlineData(SafetensorsDType.F8_E4M3, 1.0625f, 0x38)]
    [InlineData(SafetensorsDType.F8_E4M3, 1.1875f, 0x3A)]
    [InlineData(SafetensorsDType.F8_E4M3, 1.07f, 0x39)]
    [InlineData(SafetensorsDType.F8_E4M3, -1.07f, 0xB9)]
    [InlineData(SafetensorsDType.F8_E4M3, 460f, 0x7E)]                     // saturates
    [InlineData(SafetensorsDType.F8_E4M3, 1e9f, 0x7E)]
    [InlineData(SafetensorsDType.F8_E4M3, float.PositiveInfinity, 0x7E)]
    [InlineData(SafetensorsDType.F8_E4M3, float.NegativeInfinity, 0xFE)]
    [InlineData(SafetensorsDType.F8_E4M3, float.NaN, 0x7F)]
    [InlineData(SafetensorsDType.F8_E4M3, 0.0009765625f, 0x00)]           // half the smallest subnormal: tie to even (0)
    [InlineData(SafetensorsDType.F8_E4M3, 0.0029296875f, 0x02)]           // 1.5 subnormal steps: tie to even (2)
    [InlineData(SafetensorsDType.F8_E4M3, -0f, 0x80)]
    [InlineData(SafetensorsDType.F8_E5M2, 1.125f, 0x3C)]                   // tie between 1.0 and 1.25 -> 1.0
    [InlineData(SafetensorsDType.F8_E5M2, 1.375f, 0x3E)]                   // tie between 1.25 and 1.5 -> 1.5
    [InlineData(SafetensorsDType.F8_E5M2, 61439f, 0x7B)]                   // below the overflow threshold
    [InlineData(SafetensorsDType.F8_E5M2, 61440f, 0x7C)]                   // the tie goes to inf (even)
    [InlineData(SafetensorsDType.F8_E5M2, -1e9f, 0xFC)]
    [InlineData(SafetensorsDType.F8_E5M2, float.PositiveInfinity, 0x7C)]
    public void Encoding_rounds_to_nearest_even_and_saturates_E4M3(SafetensorsDType format, float value, int code) =>
        Assert.Equal((byte)code, Float8.Encode(value, format));

    [Fact]
    public void Encoding_random_values_lands_on_the_nearest_representable_value()
    {
        using var scope = NewDisposeScope();
        var x = randn(100_000, generator: new TorchSharp.torch.Generator(3)) * 50;
        var decoded = Float8.ToFloat32(Float8.Encode(x, SafetensorsDType.F8_E4M3), SafetensorsDType.F8_E4M3);
        var grid = Float8.ToFloat32(arange(0, 0x7F, dtype: ScalarType.Int64).to(ScalarType.Byte), SafetensorsDType.F8_E4M3);
        var candidates = cat([grid, -grid]);
        var best = (x.clamp(-448, 448).unsqueeze(1) - candidates.unsqueeze(0)).abs().min(1).values;
        var err = (x.clamp(-448, 448) - decoded).abs();
        Assert.Equal(0f, (err - best).abs().max().item<float>());
        Assert.True((x.abs() <= 448).logical_and((decoded - x).abs() > x.abs() * 0.0625 + 0.001).sum().item<long>() == 0);
    }
}
