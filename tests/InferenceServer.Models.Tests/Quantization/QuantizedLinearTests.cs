using InferenceServer.Models.Quantization;
using InferenceServer.Models.Weights;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Tests.Quantization;

/// <summary>The 8-bit layer on its own: exact decoding, quantization error, dtype handling, the FP8 kernel's compile and fallback.</summary>
public class QuantizedLinearTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(QuantizedFormat.Fp8E4M3, ScalarType.BFloat16)]
    [InlineData(QuantizedFormat.Fp8E4M3, ScalarType.Float32)]
    [InlineData(QuantizedFormat.Fp8E5M2, ScalarType.BFloat16)]
    public void Fp8_decode_equals_the_reference_table_for_every_finite_code(QuantizedFormat format, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var st = format == QuantizedFormat.Fp8E4M3 ? SafetensorsDType.F8_E4M3 : SafetensorsDType.F8_E5M2;
        var codes = arange(256, ScalarType.Int32).to(ScalarType.Byte).view(16, 16);
        var decoded = WeightQuantizer.DecodeFp8(codes, format, dtype).to(ScalarType.Float32);
        Assert.Equal(dtype, WeightQuantizer.DecodeFp8(codes, format, dtype).dtype);
        for (int b = 0; b < 256; b++)
        {
            float expected = Float8.Decode((byte)b, st);
            if (!float.IsFinite(expected)) continue;
            Assert.Equal(expected, decoded.view(-1)[b].item<float>());
        }
    }

    [Theory]
    [InlineData(QuantizedFormat.Fp8E4M3, 0.035)]
    [InlineData(QuantizedFormat.Int8, 0.012)]
    public void Quantized_layer_matches_the_float_layer(QuantizedFormat format, double maxRelRms)
    {
        using var scope = NewDisposeScope();
        manual_seed(1);
        var w = randn(96, 256) / 16;                            // [out, in]
        var x = randn(3, 5, 256).to(ScalarType.BFloat16);       // [B, L, in]
        using var layer = QuantizedLinear.FromWeight(w, format);
        Assert.Equal(format == QuantizedFormat.Int8 ? [96L] : [], layer.WeightScale.shape);
        Assert.Equal(format == QuantizedFormat.Int8 ? ScalarType.Int8 : ScalarType.Byte, layer.Weight.dtype);

        var wq = layer.Dequantize();
        double werr = ((wq - w).square().mean().sqrt() / w.square().mean().sqrt()).item<float>();
        var y = layer.forward(x);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        Assert.Equal([3L, 5, 96], y.shape);
        var yRef = functional.linear(x.to(ScalarType.Float32), w);
        double yerr = ((y.to(ScalarType.Float32) - yRef).square().mean().sqrt() / yRef.square().mean().sqrt()).item<float>();
        output.WriteLine($"{format}: weight rel RMS error {werr:G3}, output rel RMS error {yerr:G3} (bf16 activations)");
        Assert.InRange(werr, 0, maxRelRms);
        Assert.InRange(yerr, 0, maxRelRms + 0.01);

        // Converting the module's dtype keeps the codes and the float32 scale.
        layer.to(ScalarType.BFloat16);
        Assert.Equal(ScalarType.Float32, layer.WeightScale.dtype);
        Assert.Equal(format == QuantizedFormat.Int8 ? ScalarType.Int8 : ScalarType.Byte, layer.Weight.dtype);
        Assert.Equal(["weight", "weight_scale"], layer.state_dict().Keys.ToArray());
    }

    [Fact]
    public void Arithmetic_e4m3_encoder_gives_the_reference_codes()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var grid = Float8.ToFloat32(arange(256, ScalarType.Int32).to(ScalarType.Byte), SafetensorsDType.F8_E4M3);
        grid = grid[grid.isfinite()];
        var mids = (grid[1..] + grid[..^1]) / 2;                                 // ties (in the same-sign runs)
        var values = cat([grid, mids, randn(200_000) * 100, randn(50_000) / 300, tensor(new float[] { 500, -1e6f, 447.9f, 1e-12f, -0f })]);
        var fast = WeightQuantizer.EncodeE4M3(values);
        var reference = Float8.Encode(values, SafetensorsDType.F8_E4M3);
        long differ = fast.ne(reference).sum().item<long>();
        Assert.True(differ == 0, $"{differ} codes differ");
    }

    [Fact]
    public void Fp8_encode_is_round_to_nearest_of_the_scaled_weight()
    {
        using var scope = NewDisposeScope();
        var w = tensor(new float[] { 448, -224, 1, 0.5f, -0.001f, 0, 3.3f, 100 }).view(2, 4);
        var (codes, scale) = WeightQuantizer.Quantize(w, QuantizedFormat.Fp8E4M3);
        Assert.Equal(1f, scale.item<float>());
        var back = Float8.ToFloat32(codes, SafetensorsDType.F8_E4M3);
        Assert.Equal(new float[] { 448, -224, 1, 0.5f, -0.001953125f, 0, 3.25f, 96 }, back.data<float>().ToArray());
    }

    [Fact]
    public void Fp8_kernel_compiles_at_runtime_and_is_not_used_on_the_cpu()
    {
        output.WriteLine($"kernel: {Fp8ScaledMm.Status}");
        Assert.True(Fp8ScaledMm.IsCompiled, Fp8ScaledMm.Status);
        Assert.False(Fp8ScaledMm.IsUsable(CPU)); // the CPU dequantizes per layer
        bool cpuProbe = Fp8ScaledMm.Probe(CPU);
        output.WriteLine($"torch._scaled_mm on this CPU: {(cpuProbe ? "runs" : "unavailable: " + Fp8ScaledMm.LastProbeError)}");
        if (!cpuProbe) return;
        // Where libtorch has a CPU _scaled_mm, the kernel's numbers can be checked here against the fallback.
        using var scope = NewDisposeScope();
        manual_seed(2);
        var w = randn(64, 128) / 11;
        var x = randn(2, 7, 128).to(ScalarType.BFloat16);
        using var layer = QuantizedLinear.FromWeight(w, QuantizedFormat.Fp8E4M3);
        var viaDequant = layer.forward(x).to(ScalarType.Float32);
        Tensor viaKernel;
        try
        {
            Fp8ScaledMm.AllowCpu = true;
            viaKernel = layer.forward(x).to(ScalarType.Float32);
        }
        finally { Fp8ScaledMm.AllowCpu = false; }
        Assert.True(layer.HoldsFloat8);
        Assert.Equal(1, layer.Weight.ElementSize);
        using (var fresh = QuantizedLinear.FromWeight(w, QuantizedFormat.Fp8E4M3))
            Assert.True(layer.Dequantize().eq(fresh.Dequantize()).all().item<bool>(), "the float8 storage holds the same values as the codes");
        double rel = ((viaKernel - viaDequant).square().mean().sqrt() / viaDequant.square().mean().sqrt()).item<float>();
        output.WriteLine($"kernel vs dequantized fallback: rel RMS {rel:G3} (the kernel also rounds activations to fp8)");
        Assert.InRange(rel, 0, 0.06);
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void Int8_forward_equals_the_dequantized_product_within_rounding(ScalarType dtype)
    {
        // Per element: the product accumulates in float32 (error <= in * 2^-24 * sum |x w|) and is rounded to the output
        // dtype, the scale is cast to the activation dtype, the scaled value is rounded again: 3 roundings of at most 2^-8
        // relative in bf16 (8 significant bits), 2 of 2^-24 in float32 (the scale is exact there).
        double tol = dtype == ScalarType.BFloat16 ? 3 * Math.Pow(2, -8) : 2 * Math.Pow(2, -24);
        bool reuse = QuantizedLinear.ReuseDequantBuffers;
        try
        {
            // Non-multiples of 8 in every dimension; a large layer between small ones (the reused buffer grows, then serves smaller ones).
            foreach (var (outF, inF, tokens) in new[] { (37L, 29L, 5L), (96L, 256L, 7L), (300L, 517L, 13L), (5L, 3L, 1L), (64L, 100L, 33L) })
            foreach (bool reuseBuffers in new[] { true, false })
            {
                using var scope = NewDisposeScope();
                QuantizedLinear.ReuseDequantBuffers = reuseBuffers;
                manual_seed(outF * 1000 + inF);
                using var layer = QuantizedLinear.FromWeight(randn(outF, inF) / 16, QuantizedFormat.Int8);
                var x = randn(2, tokens, inF).to(dtype);                                                     // [B, L, in]
                var y = layer.forward(x);
                Assert.Equal(dtype, y.dtype);
                Assert.Equal([2L, tokens, outF], y.shape);
                var reference = functional.linear(x.to(ScalarType.Float64), layer.Dequantize(ScalarType.Float64)); // exact inputs
                var err = (y.to(ScalarType.Float64) - reference).abs();
                var magnitude = functional.linear(x.to(ScalarType.Float64).abs(), layer.Dequantize(ScalarType.Float64).abs());
                var bound = reference.abs() * tol + magnitude * (inF * Math.Pow(2, -24)) + 1e-12;
                double worst = (err / bound).max().item<double>();
                output.WriteLine($"[{outF}, {inF}] x {tokens} tokens, {dtype}, reuse {reuseBuffers}: max error / bound {worst:F3}");
                Assert.True(worst <= 1, $"[{outF}, {inF}] {dtype}: error {worst} x the rounding bound");
            }
        }
        finally { QuantizedLinear.ReuseDequantBuffers = reuse; }
    }
}
