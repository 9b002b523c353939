using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Quantization;

/// <summary>One quantized linear layer of a checkpoint: its module path, stored format and scale shape.</summary>
public sealed record QuantizedLayerSpec(string Path, QuantizedFormat Format, long[] WeightShape, long[] ScaleShape);

/// <summary>
/// A checkpoint seen with 8-bit linear weights, in one normalized layout: <c>X.weight</c> (FP8 codes as F8_E4M3 /
/// F8_E5M2, or I8) and <c>X.weight_scale</c> (F32, [] per tensor or [out] per output channel); every other tensor as stored.
/// <list type="bullet">
/// <item>An already-8-bit checkpoint: our int8 layout (I8 <c>X.weight</c> + F32 [out] <c>X.weight_scale</c>) as it is, or (the official scaled-FP8 layout of FLUX.2 FP8 files, as ComfyUI defines it:
/// <c>X.weight</c> F8_E4M3 + <c>X.weight_scale</c> F32 scalar, optional <c>X.input_scale</c> F32 scalar and
/// <c>X.comfy_quant</c> U8 JSON, header metadata <c>_quantization_metadata</c>; also the older spelling
/// <c>X.scale_weight</c> / <c>X.scale_input</c> with a <c>scaled_fp8</c> marker tensor) is passed through: codes are
/// read raw, <c>scale_weight</c> is renamed <c>weight_scale</c>, and the activation-scale and marker tensors are
/// dropped (weight-only use; the FP8 kernel scales activations dynamically).</item>
/// <item>A float checkpoint with a requested quantization: every 2-D <c>X.weight</c> that <c>select(X)</c> accepts
/// is quantized on load (<see cref="WeightQuantizer.Quantize"/>), one tensor at a time.</item>
/// </list>
/// Names are the inner source's (give it BFL keys). Disposing this disposes the inner source.
/// </summary>
public sealed class QuantizedCheckpoint : ITensorSource
{
    /// <summary>Per-layer tensors of the official FP8 layouts that carry no weight information.</summary>
    static readonly string[] DroppedSuffixes = [".input_scale", ".scale_input", ".comfy_quant"];
    /// <summary>Marker tensors of the older ComfyUI scaled-FP8 layout.</summary>
    static readonly string[] DroppedNames = ["scaled_fp8"];

    readonly ITensorSource inner;
    readonly List<TensorEntry> entries = [];
    readonly Dictionary<string, TensorEntry> byName = new(StringComparer.Ordinal);
    readonly Dictionary<string, string> sourceName = new(StringComparer.Ordinal); // our name -> inner name
    readonly Dictionary<string, QuantizedLayerSpec> layers = new(StringComparer.Ordinal);
    readonly bool fromFloat;
    (string Layer, Tensor Scale)? cachedScale;

    /// <summary>Layers stored quantized, by module path.</summary>
    public IReadOnlyDictionary<string, QuantizedLayerSpec> Layers => layers;

    /// <summary>True when the inner checkpoint itself holds 8-bit weights (nothing is quantized here).</summary>
    public bool IsPrequantized { get; }

    public IReadOnlyList<TensorEntry> Entries => entries;

    /// <param name="inner">The checkpoint (BFL keys).</param>
    /// <param name="requested">Quantization for a float checkpoint; ignored when it already holds 8-bit weights.</param>
    /// <param name="select">Which layer paths (a weight key without <c>.weight</c>) to quantize; default all 2-D weights.</param>
    public QuantizedCheckpoint(ITensorSource inner, WeightQuantization requested, Func<string, bool>? select = null)
    {
        this.inner = inner;
        IsPrequantized = Holds8BitWeights(inner);
        fromFloat = !IsPrequantized && requested != WeightQuantization.None;
        select ??= _ => true;
        foreach (var e in inner.Entries)
        {
            if (IsPrequantized)
            {
                if (DroppedNames.Contains(e.Name) || DroppedSuffixes.Any(s => e.Name.EndsWith(s, StringComparison.Ordinal))) continue;
                if (e.Name.EndsWith(".scale_weight", StringComparison.Ordinal)) { Add(e with { Name = e.Name[..^".scale_weight".Length] + ".weight_scale" }, e.Name); continue; }
                if (e.Name.EndsWith(".weight", StringComparison.Ordinal) && Is8Bit(inner, e))
                {
                    string path = e.Name[..^".weight".Length];
                    var scale = inner.TryGetEntry(path + ".weight_scale", out var s) ? s
                        : inner.TryGetEntry(path + ".scale_weight", out s) ? s
                        : throw new InvalidDataException($"FP8 weight '{e.Name}' has no '{path}.weight_scale' (or '{path}.scale_weight')");
                    if (e.Shape.Length != 2) throw new InvalidDataException($"FP8 weight '{e.Name}' is {e.ShapeText}; only linear weights [out, in] are supported");
                    var format = e.DType switch
                    {
                        SafetensorsDType.F8_E4M3 => QuantizedFormat.Fp8E4M3,
                        SafetensorsDType.F8_E5M2 => QuantizedFormat.Fp8E5M2,
                        _ => QuantizedFormat.Int8,
                    };
                    layers[path] = new QuantizedLayerSpec(path, format, e.Shape, s.Shape);
                }
                Add(e, e.Name);
                continue;
            }
            if (fromFloat && e.Name.EndsWith(".weight", StringComparison.Ordinal) && e.Shape.Length == 2 && IsFloat(e.DType) && select(e.Name[..^".weight".Length]))
            {
                string path = e.Name[..^".weight".Length];
                var format = WeightQuantizer.FormatOf(requested);
                long[] scaleShape = format == QuantizedFormat.Int8 ? [e.Shape[0]] : [];
                layers[path] = new QuantizedLayerSpec(path, format, e.Shape, scaleShape);
                var st = format == QuantizedFormat.Int8 ? SafetensorsDType.I8 : SafetensorsDType.F8_E4M3;
                Add(e with { DType = st, ByteLength = e.ElementCount }, e.Name);
                Add(e with { Name = path + ".weight_scale", DType = SafetensorsDType.F32, Shape = scaleShape, ByteLength = 4 * Math.Max(1, scaleShape.Aggregate(1L, (a, b) => a * b)) }, e.Name);
                continue;
            }
            Add(e, e.Name);
        }
    }

    /// <summary>
    /// True when <paramref name="source"/> holds 8-bit linear weights: an FP8 <c>X.weight</c>, or an int8 one with an
    /// <c>X.weight_scale</c> (our int8 layout: int8 [out, in] + float32 [out]).
    /// </summary>
    public static bool Holds8BitWeights(ITensorSource source) =>
        source.Entries.Any(e => e.Name.EndsWith(".weight", StringComparison.Ordinal) && Is8Bit(source, e));

    static bool Is8Bit(ITensorSource source, TensorEntry e) =>
        IsFp8(e.DType) || (e.DType == SafetensorsDType.I8 && source.TryGetEntry(e.Name[..^".weight".Length] + ".weight_scale", out _));

    /// <summary>True for the tensors an 8-bit checkpoint adds beside the weights (scales, activation scales, markers).</summary>
    public static bool IsQuantizationExtra(string name) =>
        name.EndsWith(".weight_scale", StringComparison.Ordinal) || name.EndsWith(".scale_weight", StringComparison.Ordinal)
        || DroppedNames.Contains(name) || DroppedSuffixes.Any(s => name.EndsWith(s, StringComparison.Ordinal));

    static bool IsFp8(SafetensorsDType t) => t is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2;
    static bool IsFloat(SafetensorsDType t) => t is SafetensorsDType.BF16 or SafetensorsDType.F16 or SafetensorsDType.F32 or SafetensorsDType.F64;

    void Add(TensorEntry e, string source)
    {
        if (!byName.TryAdd(e.Name, e)) throw new InvalidDataException($"checkpoint has both '{e.Name}' and a tensor that maps to it ('{source}')");
        entries.Add(e);
        sourceName[e.Name] = source;
    }

    public bool TryGetEntry(string name, out TensorEntry entry) => byName.TryGetValue(name, out entry!);

    /// <summary>
    /// A quantized weight comes back as stored (uint8 FP8 codes or int8) whatever <paramref name="dtype"/> says; a scale
    /// as float32; anything else as <see cref="ITensorSource.Load"/> does.
    /// </summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        if (!byName.TryGetValue(name, out var e)) throw new KeyNotFoundException($"no tensor named '{name}'");
        string src = sourceName[name];
        Tensor result;
        if (name.EndsWith(".weight", StringComparison.Ordinal) && layers.TryGetValue(name[..^".weight".Length], out var layer))
        {
            if (IsPrequantized && layer.Format == QuantizedFormat.Int8) result = inner.Load(src);
            else if (IsPrequantized)
            {
                using var raw = inner.LoadRaw(src);
                result = raw.view(e.Shape);
            }
            else
            {
                using var w = inner.Load(src, ScalarType.Float32);
                var (q, s) = WeightQuantizer.Quantize(w, layer.Format);
                cachedScale?.Scale.Dispose();
                cachedScale = (layer.Path, s.DetachFromDisposeScope()); // outlives the caller's scope for this weight
                result = q;
            }
        }
        else if (name.EndsWith(".weight_scale", StringComparison.Ordinal) && layers.TryGetValue(name[..^".weight_scale".Length], out layer))
        {
            if (IsPrequantized) result = inner.Load(src, ScalarType.Float32);
            else if (cachedScale is { } c && c.Layer == layer.Path) { result = c.Scale; cachedScale = null; }
            else
            {
                using var w = inner.Load(src, ScalarType.Float32);
                var (q, s) = WeightQuantizer.Quantize(w, layer.Format);
                q.Dispose();
                result = s;
            }
        }
        else return inner.Load(src, dtype, device);
        if (device is not null && result.device != device) { var moved = result.to(device); result.Dispose(); result = moved; }
        return result;
    }

    public Tensor LoadRaw(string name) => inner.LoadRaw(sourceName.TryGetValue(name, out var s) ? s : name);

    /// <summary>
    /// An already-8-bit checkpoint's tensors straight into the destination (int8 weights, scales and the rest as stored);
    /// FP8 codes (read raw) and tensors quantized here go through <see cref="Load"/>.
    /// </summary>
    public void ReadInto(string name, Tensor destination)
    {
        if (!byName.TryGetValue(name, out var e)) throw new KeyNotFoundException($"no tensor named '{name}'");
        bool raw = name.EndsWith(".weight", StringComparison.Ordinal) && layers.TryGetValue(name[..^".weight".Length], out var layer) && layer.Format != QuantizedFormat.Int8;
        if (IsPrequantized && !raw)
        {
            inner.ReadInto(sourceName[name], destination);
            return;
        }
        ITensorSource.LoadAndCopy(this, name, destination);
    }

    /// <summary>Concurrent when nothing is quantized here (quantizing keeps a weight's scale between two calls).</summary>
    public bool ConcurrentReads => IsPrequantized && inner.ConcurrentReads;

    public void Dispose()
    {
        cachedScale?.Scale.Dispose();
        inner.Dispose();
    }
}
