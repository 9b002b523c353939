using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Quantization;

/// <summary>How a quantized weight's bytes are read.</summary>
public enum QuantizedFormat
{
    /// <summary>OCP FP8 E4M3FN codes (uint8), <c>w = decode(code) * weight_scale</c>.</summary>
    Fp8E4M3,
    /// <summary>OCP FP8 E5M2 codes (uint8).</summary>
    Fp8E5M2,
    /// <summary>Signed int8, <c>w = q * weight_scale</c>, scale per output channel.</summary>
    Int8,
}

/// <summary>
/// A bias-free linear layer with 8-bit weights: <c>weight</c> [out, in] (FP8 codes as uint8, or int8) and a float32
/// <c>weight_scale</c>, either one per tensor (shape [] or [1], the official FP8 layout) or one per output channel ([out]).
/// <para>Forward: on a CUDA device where <see cref="Fp8ScaledMm"/> works, a per-tensor E4M3 weight goes through
/// <c>torch._scaled_mm</c> (activations quantized per tensor on the fly); everywhere else the codes are turned into the
/// activation dtype exactly (FP8 and int8 values are all exact in bf16), multiplied, and the scale is applied to the
/// output (<c>x (q s)^T = (x q^T) s</c>), so only one layer's weight is ever dequantized at a time.</para>
/// <para>Converting the module's dtype leaves both tensors alone (the codes are integers, the scale stays float32).</para>
/// </summary>
public sealed class QuantizedLinear : Module<Tensor, Tensor>
{
    Tensor weight;       // [out, in] uint8 (FP8 codes) or int8
    Tensor weight_scale; // [] / [1] per tensor, or [out] per output channel; float32

    public QuantizedFormat Format { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }

    /// <summary>True when one scale covers the whole tensor.</summary>
    public bool PerTensor => weight_scale.numel() == 1;

    /// <summary>An empty layer (zeros) to be filled by loading a state dict; <paramref name="scaleShape"/> is [] , [1] or [out].</summary>
    public QuantizedLinear(long inFeatures, long outFeatures, QuantizedFormat format, long[] scaleShape, Device? device = null)
        : base(nameof(QuantizedLinear))
    {
        if (!(scaleShape.Length == 0 || (scaleShape.Length == 1 && (scaleShape[0] == 1 || scaleShape[0] == outFeatures))))
            throw new ArgumentException($"weight_scale must be [], [1] or [{outFeatures}], got [{string.Join(", ", scaleShape)}]", nameof(scaleShape));
        Format = format;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        weight = zeros([outFeatures, inFeatures], format == QuantizedFormat.Int8 ? ScalarType.Int8 : ScalarType.Byte, device);
        weight_scale = ones(scaleShape, ScalarType.Float32, device);
        RegisterComponents();
    }

    /// <summary>The stored weight, [out, in]: FP8 codes (uint8), int8 values, or (after the first forward through the FP8
    /// kernel) a float8_e4m3fn tensor of the same values.</summary>
    public Tensor Weight => weight;
    /// <summary>The float32 scale ([] / [1] or [out]).</summary>
    public Tensor WeightScale => weight_scale;

    /// <summary>Quantizes a float weight [out, in] (see <see cref="WeightQuantizer.Quantize"/>) into a new layer.</summary>
    public static QuantizedLinear FromWeight(Tensor w, QuantizedFormat format)
    {
        var (q, s) = WeightQuantizer.Quantize(w, format);
        var layer = new QuantizedLinear(w.shape[1], w.shape[0], format, s.shape, w.device);
        using (no_grad())
        {
            layer.weight.copy_(q);
            layer.weight_scale.copy_(s);
        }
        q.Dispose();
        s.Dispose();
        return layer;
    }

    public override Tensor forward(Tensor x)
    {
        if (Format == QuantizedFormat.Fp8E4M3 && PerTensor && Fp8ScaledMm.IsUsable(x.device))
        {
            if (weight.dtype != Fp8ScaledMm.Float8E4M3) ToFloat8Storage();
            return Fp8ScaledMm.Linear(x, weight, weight_scale);
        }
        if (Format == QuantizedFormat.Int8) return ForwardInt8(x);
        // Dequantization cost, CPU, one [9216, 3072] weight (2 shared cores): FP8 codes by table gather 204 ms (libtorch's own
        // float8 -> bf16 conversion is slower, 315 ms, so the codes stay uint8 here), int8 -> bf16 69 ms; the bf16
        // matmul of 768 tokens through it 150 ms.
        using var scope = NewDisposeScope();
        var y = functional.linear(x, Unscaled(x.dtype));                      // [..., out]
        var s = PerTensor ? weight_scale.reshape([]) : weight_scale;          // [] or [out]
        return (y * s).to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Int8: <c>(x q^T) s</c> with q converted to x's dtype (exact) and s cast to x's dtype (as
    /// <c>torch._weight_int8pack_mm</c> takes it; a bf16 scale is off by at most 2^-9 relative, one rounding).
    /// <para>CPU cost, one [9216, 3072] weight, 768 bf16 tokens (2 shared cores, medians): a fresh bf16 copy of the
    /// weight 42-51 ms (each call maps and faults in new pages: 56 MB is above glibc's mmap threshold), a copy into a reused
    /// buffer 16 ms; the epilogue <c>(y * s_f32).to(bf16)</c> 45 ms (a float32 temporary), <c>y.mul_(s_bf16)</c> 8 ms.
    /// libtorch's own CPU kernel <c>_weight_int8pack_mm</c> (reachable through TorchScript) was measured and is not used:
    /// [3072, 3072] 240 ms against 58 ms here (bf16), 11 s in float32, and it crashes the process (SIGSEGV) when the
    /// input width is not a multiple of its block size (K = 29).</para>
    /// </summary>
    Tensor ForwardInt8(Tensor x)
    {
        using var scope = NewDisposeScope();
        var dtype = x.dtype;
        var s = (PerTensor ? weight_scale.reshape([]) : weight_scale).to(dtype);  // [] or [out]
        if (x.device.type != DeviceType.CPU || !ReuseDequantBuffers || (x.requires_grad && is_grad_enabled())) // autograd keeps w
            return functional.linear(x, weight.to(dtype)).mul_(s).MoveToOuterDisposeScope();
        var buffer = DequantBuffers.Rent(weight.numel(), dtype);
        try
        {
            var w = buffer.narrow(0, 0, weight.numel()).view(weight.shape).copy_(weight);  // [out, in], exact
            return functional.linear(x, w).mul_(s).MoveToOuterDisposeScope();
        }
        finally { DequantBuffers.Return(buffer); }
    }

    /// <summary>
    /// Whether int8 layers on the CPU dequantize into reused buffers (one per concurrent forward and activation dtype, as
    /// large as the largest int8 weight: 170 MB in bf16 for klein-4B's [27648, 3072]) instead of a fresh tensor per layer.
    /// Default: true unless the environment variable <c>INFERENCE_SERVER_INT8_REUSE</c> is <c>0</c>.
    /// </summary>
    public static bool ReuseDequantBuffers { get; set; } = Environment.GetEnvironmentVariable("INFERENCE_SERVER_INT8_REUSE") != "0";

    /// <summary>Flat CPU buffers for the dequantized int8 weight, kept between forwards (never shared by two at a time).</summary>
    static class DequantBuffers
    {
        static readonly System.Collections.Concurrent.ConcurrentDictionary<ScalarType, System.Collections.Concurrent.ConcurrentBag<Tensor>> free = new();

        public static Tensor Rent(long numel, ScalarType dtype)
        {
            var bag = free.GetOrAdd(dtype, _ => new());
            if (bag.TryTake(out var buffer))
            {
                if (buffer.numel() >= numel) return buffer;
                buffer.Dispose();
            }
            return empty([numel], dtype).DetachFromDisposeScope(); // lives in the pool, not in the caller's scope
        }

        public static void Return(Tensor buffer) => free.GetOrAdd(buffer.dtype, _ => new()).Add(buffer);
    }

    /// <summary>
    /// Replaces the uint8 codes by a float8_e4m3fn tensor of the same values (1 byte each, same device), the form
    /// <c>torch._scaled_mm</c> takes; done once, at the first forward through the kernel.
    /// </summary>
    void ToFloat8Storage()
    {
        using var exact = WeightQuantizer.DecodeFp8(weight, Format, ScalarType.BFloat16);
        var w8 = Fp8ScaledMm.ToFloat8(exact).DetachFromDisposeScope(); // lives with the module, not with the forward
        weight.Dispose();
        weight = w8;
        ConditionallyRegisterBuffer(nameof(weight), w8);
    }

    /// <summary>True once the weight is held as a float8_e4m3fn tensor (after a forward through the FP8 kernel).</summary>
    public bool HoldsFloat8 => weight.dtype == Fp8ScaledMm.Float8E4M3;

    /// <summary>The weight in <paramref name="dtype"/> without its scale (exact: every code is representable in bf16).</summary>
    public Tensor Unscaled(ScalarType dtype)
    {
        if (Format == QuantizedFormat.Int8 || HoldsFloat8) return weight.to(dtype);
        return WeightQuantizer.DecodeFp8(weight, Format, dtype);
    }

    /// <summary>The dequantized weight [out, in] in <paramref name="dtype"/> (computed in float32).</summary>
    public Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        var w = Unscaled(ScalarType.Float32);
        var s = PerTensor ? weight_scale.reshape([]) : weight_scale.unsqueeze(1);
        return (w * s).to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>Replaces the stored weight by <paramref name="w"/> [out, in] quantized in this layer's format and scale layout (for merging an adapter).</summary>
    public void Requantize(Tensor w)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var (q, s) = WeightQuantizer.Quantize(w, Format);
        if (!PerTensor && s.numel() != weight_scale.numel()) throw new InvalidOperationException("scale layout changed");
        // A weight already held as float8_e4m3fn takes the code values (exact), not the raw code bytes.
        weight.copy_(HoldsFloat8 ? WeightQuantizer.DecodeFp8(q, Format, ScalarType.Float32) : q);
        weight_scale.copy_(PerTensor ? s.reshape(weight_scale.shape) : s);
    }

    /// <summary>Bytes held by the weight and its scale.</summary>
    public long ByteSize => weight.numel() * weight.ElementSize + weight_scale.numel() * weight_scale.ElementSize;

    // dtype conversions keep the codes and the float32 scale; device moves work as usual.
    protected override Module _to(ScalarType dtype, bool non_blocking) => this;
    protected override Module _to(Device device, ScalarType dtype, bool non_blocking) => _to(device.type, device.index, non_blocking);
}
