using InferenceServer.Models.Weights;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Quantization;

/// <summary>Weight quantization asked for at load time (or by the quantize command).</summary>
public enum WeightQuantization
{
    /// <summary>Weights as stored (a checkpoint that is already 8-bit still loads as 8-bit).</summary>
    None,
    /// <summary>FP8 E4M3 with one float32 scale per tensor (the official FLUX.2 FP8 layout).</summary>
    Fp8,
    /// <summary>int8 weight-only with one float32 scale per output channel.</summary>
    Int8,
}

/// <summary>Quantizing, dequantizing and swapping linear layers.</summary>
public static class WeightQuantizer
{
    /// <summary>Largest finite E4M3FN magnitude.</summary>
    public const double Fp8E4M3Max = 448;
    /// <summary>int8 range used: symmetric [-127, 127].</summary>
    public const double Int8Max = 127;

    /// <summary>Parses none|fp8|int8 (case-insensitive).</summary>
    public static WeightQuantization Parse(string text) => text.ToLowerInvariant() switch
    {
        "none" or "" => WeightQuantization.None,
        "fp8" or "fp8-e4m3" or "float8" => WeightQuantization.Fp8,
        "int8" => WeightQuantization.Int8,
        _ => throw new ArgumentException($"unknown weight quantization '{text}' (none, fp8 or int8)", nameof(text)),
    };

    /// <summary>The stored format a requested quantization produces.</summary>
    public static QuantizedFormat FormatOf(WeightQuantization q) => q switch
    {
        WeightQuantization.Fp8 => QuantizedFormat.Fp8E4M3,
        WeightQuantization.Int8 => QuantizedFormat.Int8,
        _ => throw new ArgumentException("no format for WeightQuantization.None", nameof(q)),
    };

    /// <summary>
    /// Quantizes a float weight [out, in]: FP8 E4M3 with one scale <c>amax / 448</c> for the tensor (shape []), codes
    /// rounded to nearest even; int8 with one scale <c>amax_row / 127</c> per output channel (shape [out]), values
    /// rounded to nearest and clamped to ±127. Returns (codes uint8 | values int8, float32 scale) on the weight's device.
    /// </summary>
    public static (Tensor Q, Tensor Scale) Quantize(Tensor w, QuantizedFormat format)
    {
        if (w.dim() != 2) throw new ArgumentException($"a linear weight is [out, in], got [{string.Join(", ", w.shape)}]", nameof(w));
        using var scope = NewDisposeScope();
        var wf = w.to(ScalarType.Float32);
        switch (format)
        {
            case QuantizedFormat.Int8:
            {
                var scale = (wf.abs().amax([1L]) / Int8Max).clamp_min(1e-30);              // [out]
                var q = (wf / scale.unsqueeze(1)).round().clamp(-Int8Max, Int8Max).to(ScalarType.Int8);
                return (q.MoveToOuterDisposeScope(), scale.MoveToOuterDisposeScope());
            }
            case QuantizedFormat.Fp8E4M3:
            case QuantizedFormat.Fp8E5M2:
            {
                double max = format == QuantizedFormat.Fp8E4M3 ? Fp8E4M3Max : 57344;
                var scale = (wf.abs().max() / max).clamp_min(1e-30);                           // []
                var codes = format == QuantizedFormat.Fp8E4M3 ? EncodeE4M3(wf / scale) : Float8.Encode(wf / scale, SafetensorsDType.F8_E5M2);
                return (codes.MoveToOuterDisposeScope(), scale.MoveToOuterDisposeScope());
            }
            default: throw new ArgumentOutOfRangeException(nameof(format), format, null);
        }
    }

    /// <summary>
    /// E4M3FN codes of float values, rounded to nearest even and saturated at ±448, by arithmetic (no table search):
    /// with <c>e = clamp(floor(log2 |x|), -6, 8)</c> (the binade; -6 also covers the subnormals) and
    /// <c>n = round_half_even(|x| 2^(3-e))</c> in [0, 16], the magnitude code is <c>8 (e + 6) + n</c> (n = 16 is the
    /// next binade's first code, so mantissa carries need no care); the sign adds 0x80. Same codes as
    /// <see cref="Float8.Encode(Tensor, SafetensorsDType)"/> for finite input, in element-wise float32 work.
    /// </summary>
    public static Tensor EncodeE4M3(Tensor values)
    {
        using var scope = NewDisposeScope();
        var result = empty(values.shape, ScalarType.Byte, values.device);
        using var flatOut = result.view(-1);
        using var flatIn = values.reshape(-1);
        const long chunk = 1 << 24; // bounds the float32 temporaries to 64 MB each
        for (long start = 0; start < flatIn.numel(); start += chunk)
        {
            using var inner = NewDisposeScope();
            long n = Math.Min(chunk, flatIn.numel() - start);
            var x = flatIn.narrow(0, start, n).to(ScalarType.Float32);
            var a = x.abs().clamp_max(Fp8E4M3Max);
            var e = a.clamp_min(1e-30).log2().floor_().clamp_(-6, 8);             // binade
            var m = (a * (3 - e).exp2()).round_();                                 // [0, 16]
            var code = (e + 6).mul_(8).add_(m);                                     // [0, 126]
            code = where(x.signbit(), code + 128, code);
            flatOut.narrow(0, start, n).copy_(code.to(ScalarType.Byte));
        }
        return result.MoveToOuterDisposeScope();
    }

    static readonly System.Collections.Concurrent.ConcurrentDictionary<(QuantizedFormat, ScalarType, string), Tensor> tables = new();

    /// <summary>
    /// FP8 codes (uint8) to <paramref name="dtype"/>, exactly (every FP8 value is a bf16 value): one gather from a
    /// 256-entry table held per (format, dtype, device), indexed by int32 (TorchSharp has no dtype-reinterpreting view
    /// for a bit trick). Temporaries: the int32 index and the result.
    /// </summary>
    public static Tensor DecodeFp8(Tensor codes, QuantizedFormat format, ScalarType dtype)
    {
        if (codes.dtype == Fp8ScaledMm.Float8E4M3) return codes.to(dtype); // native conversion
        if (codes.dtype != ScalarType.Byte) throw new ArgumentException($"FP8 codes must be uint8, got {codes.dtype}", nameof(codes));
        var table = tables.GetOrAdd((format, dtype, codes.device.ToString()), key =>
        {
            var st = format switch
            {
                QuantizedFormat.Fp8E4M3 => SafetensorsDType.F8_E4M3,
                QuantizedFormat.Fp8E5M2 => SafetensorsDType.F8_E5M2,
                _ => throw new ArgumentException($"{format} is not an FP8 format", nameof(format)),
            };
            var values = Enumerable.Range(0, 256).Select(b => Float8.Decode((byte)b, st)).ToArray();
            return tensor(values, device: codes.device).to(dtype).DetachFromDisposeScope();
        });
        using var scope = NewDisposeScope();
        var index = codes.reshape(-1).to(ScalarType.Int32);
        return table.index_select(0, index).view(codes.shape).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Replaces every <see cref="Linear"/> (no bias) under <paramref name="root"/> whose path <paramref name="select"/>
    /// accepts by a <see cref="QuantizedLinear"/> made by <paramref name="make"/> (given the path and the old layer), under
    /// the same name, so state-dict keys become <c>path.weight</c> + <c>path.weight_scale</c>. The old layer is disposed.
    /// The owner takes it through <see cref="ILinearHost"/> (or is a ModuleList). Returns the paths replaced.
    /// </summary>
    public static IReadOnlyList<string> Swap(Module root, Func<string, bool> select, Func<string, Linear, QuantizedLinear> make)
    {
        var swapped = new List<string>();
        foreach (var (path, module) in root.named_modules().ToList())
        {
            if (module is not Linear linear || !select(path)) continue;
            if (linear.bias is not null) throw new NotSupportedException($"{path}: a quantized linear has no bias");
            int dot = path.LastIndexOf('.');
            var parent = dot < 0 ? root : Find(root, path[..dot]);
            string name = path[(dot + 1)..];
            var replacement = make(path, linear);
            Replace(parent, name, replacement);
            linear.Dispose();
            swapped.Add(path);
        }
        return swapped;
    }

    /// <summary>Quantizes (in place, layer by layer) every selected Linear of an already loaded module.</summary>
    public static IReadOnlyList<string> QuantizeInPlace(Module root, QuantizedFormat format, Func<string, bool>? select = null) =>
        Swap(root, select ?? (_ => true), (_, linear) => QuantizedLinear.FromWeight(linear.weight!, format));

    static Module Find(Module root, string path)
    {
        foreach (var (p, m) in root.named_modules()) if (p == path) return m;
        throw new KeyNotFoundException($"no module at '{path}'");
    }

    /// <summary>Puts <paramref name="replacement"/> where <paramref name="parent"/> holds child <paramref name="name"/>: a list entry by index, else through the parent's <see cref="ILinearHost"/>.</summary>
    static void Replace(Module parent, string name, Module replacement)
    {
        if (replacement is not Module<Tensor, Tensor> layer) throw new ArgumentException($"{replacement.GetType().Name} is not a Module<Tensor, Tensor>", nameof(replacement));
        if (parent is ModuleList<Module<Tensor, Tensor>> list && int.TryParse(name, out int index)) list[index] = layer;
        else if (parent is ILinearHost host) host.ReplaceLinear(name, layer);
        else throw new NotSupportedException($"{parent.GetType().Name}.{name}: the module holding this linear does not implement ILinearHost, so it cannot be quantized");
        parent.register_module(name, null!); // unregister the old child
        parent.register_module(name, replacement);
    }

    /// <summary>Every quantized layer under <paramref name="root"/> with its path.</summary>
    public static IEnumerable<(string Path, QuantizedLinear Layer)> QuantizedLayers(Module root) =>
        root.named_modules().Where(m => m.module is QuantizedLinear).Select(m => (m.name, (QuantizedLinear)m.module));

    /// <summary>Bytes of every parameter and buffer (the resident weight memory).</summary>
    public static long WeightBytes(Module root) => root.state_dict().Values.Sum(t => t.numel() * t.ElementSize);

    /// <summary>
    /// One line for ListModels and the log: the weight storage and how matmuls run on the module's device, e.g.
    /// "bf16", "fp8 weights (e4m3, per-tensor scale, 140 of 144 linears), dequantized per layer (cpu)", "fp8 scaled_mm (cuda)".
    /// </summary>
    public static string Describe(Module root)
    {
        var floats = root.parameters().FirstOrDefault(p => p.is_floating_point());
        string dtype = floats is null ? "float" : floats.dtype switch
        {
            ScalarType.BFloat16 => "bf16", ScalarType.Float16 => "fp16", ScalarType.Float32 => "fp32", var d => d.ToString().ToLowerInvariant(),
        };
        var layers = QuantizedLayers(root).Select(l => l.Layer).ToList();
        if (layers.Count == 0) return dtype;
        int linears = layers.Count + root.modules().Count(m => m is Linear);
        var device = (floats ?? layers[0].Weight).device;
        string where = device.type.ToString().ToLowerInvariant();
        string count = layers.Count == linears ? "all linears" : $"{layers.Count} of {linears} linears";
        var parts = new List<string>();
        foreach (var g in layers.GroupBy(l => (l.Format, l.PerTensor)))
        {
            var (format, perTensor) = g.Key;
            bool scaledMm = format == QuantizedFormat.Fp8E4M3 && perTensor && Fp8ScaledMm.IsUsable(device);
            string scale = perTensor ? "per-tensor scale" : "per-output-channel scale";
            parts.Add(format switch
            {
                QuantizedFormat.Int8 => $"int8 weight-only ({scale}), dequantized per layer to {dtype}{(device.type == DeviceType.CPU && QuantizedLinear.ReuseDequantBuffers ? " into a reused buffer" : "")} ({where})",
                _ when scaledMm => $"fp8 scaled_mm ({FormatName(format)}, {scale}; {where})",
                _ => $"fp8 weights ({FormatName(format)}, {scale}), dequantized per layer to {dtype} ({where})",
            });
        }
        return $"{string.Join("; ", parts)}; {count}, other tensors {dtype}";
    }

    static string FormatName(QuantizedFormat f) => f == QuantizedFormat.Fp8E4M3 ? "e4m3" : "e5m2";
}
