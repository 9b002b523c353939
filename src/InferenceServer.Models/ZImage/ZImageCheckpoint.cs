using InferenceServer.Models.Quantization;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.ZImage;

/// <summary>Rows <c>[RowStart, RowStart + Rows)</c> of checkpoint tensor <c>Source</c> are the module tensor <c>Name</c> (diffusers key).</summary>
public sealed record ZImageKeyPart(string Name, string Source, long RowStart, long Rows);

/// <summary>
/// Z-Image transformer checkpoints in either naming: diffusers / official (<c>all_x_embedder.2-1.weight</c>,
/// <c>layers.N.attention.to_q.weight</c>, ...; the module's own names) or the single-file / ComfyUI one as diffusers'
/// <c>convert_z_image_transformer_checkpoint_to_diffusers</c> defines it: optional prefix <c>model.diffusion_model.</c>,
/// <c>x_embedder.*</c>, <c>final_layer.*</c>, fused <c>attention.qkv.weight</c> (rows [q; k; v]), <c>attention.out.weight</c>,
/// <c>attention.q_norm/k_norm.weight</c> and an unused <c>norm_final.weight</c>. Both are read through one name map.
/// </summary>
public static class ZImageCheckpoint
{
    /// <summary>The prefix ComfyUI-style single files put before every key.</summary>
    public const string SingleFilePrefix = "model.diffusion_model.";

    /// <summary>
    /// The linears 8-bit weights cover: every block's attention (q, k, v, out) and SwiGLU projections, about 98% of the
    /// weights; the embedders, adaLN projections and final layer stay in the model dtype (as FLUX.2's FP8 release keeps them).
    /// </summary>
    public static bool QuantizesLayer(string modulePath) =>
        modulePath.EndsWith(".attention.to_q", StringComparison.Ordinal) || modulePath.EndsWith(".attention.to_k", StringComparison.Ordinal)
        || modulePath.EndsWith(".attention.to_v", StringComparison.Ordinal) || modulePath.EndsWith(".attention.to_out.0", StringComparison.Ordinal)
        || modulePath.Contains(".feed_forward.w", StringComparison.Ordinal);

    /// <summary>
    /// True when the tensor names are a Z-Image transformer in either naming: the key diffusers' single-file loader looks
    /// for (<c>layers.0.adaLN_modulation.0.weight</c>, which FLUX checkpoints lack) plus the Z-Image-only caption embedder
    /// (<c>cap_embedder.1.weight</c>) and a learned pad token; the prefix is allowed.
    /// </summary>
    public static bool IsZImage(IEnumerable<string> tensorNames)
    {
        var names = tensorNames.Select(StripPrefix).ToHashSet(StringComparer.Ordinal);
        return names.Contains("layers.0.adaLN_modulation.0.weight") && names.Contains("cap_embedder.1.weight")
            && (names.Contains("x_pad_token") || names.Contains("cap_pad_token"));
    }

    /// <summary>True when the names use the single-file naming (prefix, <c>x_embedder.*</c>, fused <c>qkv</c>, ...) rather than diffusers'.</summary>
    public static bool IsSingleFile(IEnumerable<string> tensorNames) =>
        tensorNames.Any(n => n.StartsWith(SingleFilePrefix, StringComparison.Ordinal) || Map(StripPrefix(n), 3) is not [var p] || p.Name != StripPrefix(n));

    static string StripPrefix(string name) => name.StartsWith(SingleFilePrefix, StringComparison.Ordinal) ? name[SingleFilePrefix.Length..] : name;

    /// <summary>
    /// The module tensors a checkpoint tensor holds (diffusers names; none for the dropped <c>norm_final.weight</c>). A diffusers
    /// name maps to itself; an unknown name maps to itself too, so the loader reports it as unexpected.
    /// </summary>
    /// <param name="name">Checkpoint key (prefix allowed).</param>
    /// <param name="rows">Its first dimension (a fused qkv splits it in 3 equal parts).</param>
    public static IReadOnlyList<ZImageKeyPart> Map(string name, long rows)
    {
        string n = StripPrefix(name);
        if (n == "norm_final.weight") return []; // the official FinalLayer has its own non-affine norm: this weight is unused
        if (n.StartsWith("x_embedder.", StringComparison.Ordinal)) n = "all_x_embedder.2-1." + n["x_embedder.".Length..];
        else if (n.StartsWith("final_layer.", StringComparison.Ordinal)) n = "all_final_layer.2-1." + n["final_layer.".Length..];
        else if (n.EndsWith(".attention.qkv.weight", StringComparison.Ordinal))
        {
            string p = n[..^"qkv.weight".Length];
            long r = rows / 3;
            return [new(p + "to_q.weight", name, 0, r), new(p + "to_k.weight", name, r, r), new(p + "to_v.weight", name, 2 * r, r)];
        }
        else if (n.EndsWith(".attention.out.weight", StringComparison.Ordinal)) n = n[..^"out.weight".Length] + "to_out.0.weight";
        else if (n.EndsWith(".attention.q_norm.weight", StringComparison.Ordinal)) n = n[..^"q_norm.weight".Length] + "norm_q.weight";
        else if (n.EndsWith(".attention.k_norm.weight", StringComparison.Ordinal)) n = n[..^"k_norm.weight".Length] + "norm_k.weight";
        return [new(n, name, 0, rows)];
    }

    /// <summary>Names and shapes under diffusers names (for config inference from either naming).</summary>
    public static IReadOnlyDictionary<string, long[]> ToDiffusersNames(IReadOnlyDictionary<string, long[]> shapes)
    {
        var d = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (var (name, shape) in shapes)
            foreach (var p in Map(name, shape.Length > 0 ? shape[0] : 1))
                d[p.Name] = p.Rows == (shape.Length > 0 ? shape[0] : 1) ? shape : [p.Rows, .. shape[1..]];
        return d;
    }

    /// <summary>
    /// <paramref name="source"/> under diffusers names (the module's keys); a view when the names differ (disposing it disposes
    /// <paramref name="source"/>), the source itself otherwise. Fused qkv rows are split on load.
    /// </summary>
    public static ITensorSource AsDiffusers(ITensorSource source) =>
        IsSingleFile(source.Entries.Select(e => e.Name)) ? new DiffusersView(source, ownsInner: true) : source;

    /// <summary>
    /// Loads <paramref name="source"/> with 8-bit block linears, the way FLUX.2 does (<see cref="Flux2.Flux2Checkpoint"/>): a checkpoint
    /// that already holds 8-bit weights keeps them; a float one is quantized tensor by tensor while it is read
    /// (<see cref="QuantizedCheckpoint"/> over <see cref="QuantizesLayer"/>). The chosen Linears become <see cref="Quantization.QuantizedLinear"/> first.
    /// A model built on the meta device is then given storage on <paramref name="device"/> (default the CPU).
    /// </summary>
    public static LoadReport Load(ZImageTransformer model, ITensorSource source, WeightQuantization quantization, bool strict = true, ScalarType? dtype = null, Device? device = null)
    {
        using var view = IsSingleFile(source.Entries.Select(e => e.Name)) ? new DiffusersView(source, ownsInner: false) : null;
        ITensorSource named = view ?? source;
        if (quantization == WeightQuantization.None && !QuantizedCheckpoint.Holds8BitWeights(named)) return Load(MetaModules.Materialize(model, device ?? CPU), source, strict, dtype);
        var q = new QuantizedCheckpoint(named, quantization, QuantizesLayer);   // not disposed: it would dispose the caller's source
        WeightQuantizer.Swap(model, q.Layers.ContainsKey, (path, linear) =>
        {
            var spec = q.Layers[path];
            return new Quantization.QuantizedLinear(spec.WeightShape[1], spec.WeightShape[0], spec.Format, spec.ScaleShape, linear.weight!.device);
        });
        return StateDict.Load(MetaModules.Materialize(model, device ?? CPU), q, strict, dtype: dtype);
    }

    /// <summary>
    /// Loads <paramref name="source"/> (either naming) into <paramref name="model"/>. Strict by default: any missing, unexpected or
    /// mis-shaped tensor throws an <see cref="InvalidDataException"/> naming them (under their diffusers names) before anything is copied.
    /// </summary>
    public static LoadReport Load(ZImageTransformer model, ITensorSource source, bool strict = true, ScalarType? dtype = null)
    {
        if (!IsSingleFile(source.Entries.Select(e => e.Name))) return StateDict.Load(model, source, strict, dtype: dtype);
        using var view = new DiffusersView(source, ownsInner: false); // the caller keeps the source
        try { return StateDict.Load(model, view, strict, dtype: dtype); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{Describe(source)} (single-file naming): {e.Message}", e); }
    }

    /// <summary>Opens <paramref name="path"/> (file, index or folder, see <see cref="Checkpoint.Open"/>) and loads it.</summary>
    public static LoadReport Load(ZImageTransformer model, string path, bool strict = true, ScalarType? dtype = null)
    {
        using var source = Checkpoint.Open(path);
        return Load(model, source, strict, dtype);
    }

    static string Describe(ITensorSource s) => s is SafetensorsFile f ? f.Path : s is ShardedSafetensors sh ? sh.Path : "checkpoint";

    sealed class DiffusersView : ITensorSource
    {
        readonly ITensorSource inner;
        readonly bool ownsInner;
        readonly Dictionary<string, (TensorEntry Entry, ZImageKeyPart Part)> byName = new(StringComparer.Ordinal);
        (string Name, ScalarType? DType, Tensor T)? cached; // q, k, v of one fused qkv are loaded one after another: read it once

        public DiffusersView(ITensorSource inner, bool ownsInner)
        {
            this.inner = inner;
            this.ownsInner = ownsInner;
            var entries = new List<TensorEntry>();
            foreach (var e in inner.Entries)
                foreach (var p in Map(e.Name, e.Shape.Length > 0 ? e.Shape[0] : 1))
                {
                    long[] shape = p.Rows == (e.Shape.Length > 0 ? e.Shape[0] : 1) ? e.Shape : [p.Rows, .. e.Shape[1..]];
                    long bytes = shape.Aggregate(1L, (a, x) => a * x) * e.DType.Size();
                    var entry = new TensorEntry(p.Name, e.DType, shape, e.Offset + p.RowStart * (e.ByteLength / Math.Max(1, e.Shape.Length > 0 ? e.Shape[0] : 1)), bytes, e.File);
                    if (!byName.TryAdd(p.Name, (entry, p)))
                        throw new InvalidDataException($"checkpoint tensors '{byName[p.Name].Part.Source}' and '{e.Name}' both hold '{p.Name}'");
                    entries.Add(entry);
                }
            Entries = entries;
        }

        public IReadOnlyList<TensorEntry> Entries { get; }
        public bool TryGetEntry(string name, out TensorEntry entry)
        {
            bool ok = byName.TryGetValue(name, out var x);
            entry = x.Entry;
            return ok;
        }

        public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
        {
            var (entry, p) = byName.TryGetValue(name, out var x) ? x : throw new KeyNotFoundException($"no tensor named '{name}'");
            var stored = inner.TryGetEntry(p.Source, out var se) ? se : throw new KeyNotFoundException($"no tensor named '{p.Source}'");
            if (stored.Shape.Length == 0 || p.Rows == stored.Shape[0]) return inner.Load(p.Source, dtype, device);
            if (cached is not { } c || c.Name != p.Source || c.DType != dtype)
            {
                cached?.T.Dispose();
                cached = (p.Source, dtype, inner.Load(p.Source, dtype).DetachFromDisposeScope());
            }
            using var rows = cached.Value.T.narrow(0, p.RowStart, p.Rows);
            var t = rows.clone();
            if (device is not null && t.device != device) { var m = t.to(device); t.Dispose(); t = m; }
            return t;
        }

        public Tensor LoadRaw(string name)
        {
            var (_, p) = byName.TryGetValue(name, out var x) ? x : throw new KeyNotFoundException($"no tensor named '{name}'");
            if (inner.TryGetEntry(p.Source, out var se) && se.Shape.Length > 0 && p.Rows != se.Shape[0])
                throw new NotSupportedException($"raw bytes of '{name}', a part of the fused '{p.Source}'");
            return inner.LoadRaw(p.Source);
        }

        public void Dispose()
        {
            cached?.T.Dispose();
            cached = null;
            if (ownsInner) inner.Dispose();
        }
    }
}
