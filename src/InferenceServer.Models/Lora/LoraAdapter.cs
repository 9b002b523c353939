using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Lora;

/// <summary>
/// The low-rank delta of one adapted linear: <c>dW = Up @ Down</c>, Down [R, in], Up [out, R], the file's alpha/rank factors
/// folded into Up. Modules that add into one layer are concatenated along R; modules sharing one Down (a fused qkv split
/// into to_q/to_k/to_v with a copied lora_A, as ai-toolkit and diffusers write it) share its columns.
/// </summary>
public sealed record LoraDelta(Tensor Down, Tensor Up)
{
    public long Rank => Down.shape[0];
}

/// <summary>
/// A LoRA adapter resolved onto one model: per adapted linear (module path), its <see cref="LoraDelta"/> in the model's
/// dtype and device. The base weights are untouched: <see cref="LoraRuntime"/> adds the deltas per row, or merges them.
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    readonly Dictionary<string, LoraDelta> deltas;

    LoraAdapter(string name, string format, LoraTargets model, Dictionary<string, LoraDelta> deltas, int modules, IReadOnlyList<long> ranks, IReadOnlyList<double> alphas)
    {
        Name = name; Format = format; Model = model; this.deltas = deltas; Modules = modules; Ranks = ranks; Alphas = alphas;
        Bytes = deltas.Values.Sum(d => d.Down.numel() * d.Down.ElementSize + d.Up.numel() * d.Up.ElementSize);
    }

    public string Name { get; }
    /// <summary>"diffusers", "peft", "kohya", "comfyui" or "bfl" (see <see cref="LoraFile.FormatOf"/>).</summary>
    public string Format { get; }
    /// <summary>The model layers it was resolved onto (an adapter runs only on that model).</summary>
    public LoraTargets Model { get; }
    /// <summary>Modules (A/B pairs) in the file.</summary>
    public int Modules { get; }
    /// <summary>The distinct ranks of its modules, ascending.</summary>
    public IReadOnlyList<long> Ranks { get; }
    /// <summary>The distinct alphas stored in the file (.alpha tensors or PEFT metadata), ascending; empty when it stores none (factor 1).</summary>
    public IReadOnlyList<double> Alphas { get; }
    /// <summary>Adapted linears of the model (targets).</summary>
    public int Targets => deltas.Count;
    /// <summary>Bytes held by the deltas.</summary>
    public long Bytes { get; }
    public IReadOnlyDictionary<string, LoraDelta> Deltas => deltas;

    /// <summary>One line for logs and listings.</summary>
    public override string ToString() =>
        $"{Name}: {Format}, {Modules} modules onto {Targets} linears, rank {string.Join("/", Ranks)}, alpha {(Alphas.Count == 0 ? "none (factor 1)" : string.Join("/", Alphas))}, {Bytes / 1e6:F1} MB";

    /// <summary>
    /// Reads a LoRA safetensors file and maps every module onto <paramref name="targets"/>. Every key must map to a layer with
    /// matching shapes and finite values, else <see cref="InvalidDataException"/> naming the file and the first bad key.
    /// </summary>
    public static LoraAdapter Load(string path, LoraTargets targets, ScalarType dtype, Device? device = null, string? name = null)
    {
        name ??= Path.GetFileNameWithoutExtension(path);
        try
        {
            using var file = SafetensorsFile.Open(path);
            return Resolve(file, targets, dtype, device ?? CPU, name);
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new InvalidDataException($"adapter '{name}' ({path}): {e.Message}", e);
        }
    }

    static LoraAdapter Resolve(SafetensorsFile file, LoraTargets targets, ScalarType dtype, Device device, string name)
    {
        var modules = LoraFile.Modules(file);
        string format = LoraFile.FormatOf(modules);
        var blocks = new Dictionary<string, List<Block>>(StringComparer.Ordinal);
        var ranks = new SortedSet<long>();
        var alphas = new SortedSet<double>();
        using var scope = NewDisposeScope();
        foreach (var m in modules)
        {
            var pieces = targets.Resolve(m.Key)
                ?? throw new InvalidDataException($"key '{m.Down}': '{m.Key}' is not an adaptable layer of this model{Hint(m.Key)}");
            var down = Finite(file, m.Down);
            var up = Finite(file, m.Up);
            if (down.dim() != 2 || up.dim() != 2 || up.shape[1] != down.shape[0])
                throw new InvalidDataException($"key '{m.Up}': up [{string.Join(", ", up.shape)}] and down [{string.Join(", ", down.shape)}] are not [out, r] and [r, in]");
            long rank = down.shape[0];
            ranks.Add(rank);
            double factor = 1;
            if (m.Alpha is not null)
            {
                using var a = file.Load(m.Alpha, ScalarType.Float64);
                if (a.numel() != 1) throw new InvalidDataException($"key '{m.Alpha}': alpha must be a scalar, got [{string.Join(", ", a.shape)}]");
                double alpha = a.item<double>();
                if (!double.IsFinite(alpha)) throw new InvalidDataException($"key '{m.Alpha}': alpha is {alpha}");
                alphas.Add(alpha);
                factor = alpha / rank;
            }
            else if (LoraFile.PeftAlpha(file.Metadata, m.Key) is { } peft) { alphas.Add(peft); factor = peft / rank; }

            if (pieces.Sum(p => p.Rows) != up.shape[0])
                throw new InvalidDataException($"key '{m.Up}': {up.shape[0]} rows, but '{m.Key}' covers {pieces.Sum(p => p.Rows)} rows of {string.Join(", ", pieces.Select(p => p.Target).Distinct())}");
            foreach (var p in pieces)
            {
                var shape = targets.Layers[p.Target];
                if (down.shape[1] != shape.In)
                    throw new InvalidDataException($"key '{m.Down}': {down.shape[1]} input features, layer {p.Target} takes {shape.In}");
                if (p.SrcRow + p.Rows > up.shape[0] || p.DstRow + p.Rows > shape.Out)
                    throw new InvalidDataException($"key '{m.Up}': rows [{p.SrcRow}, {p.SrcRow + p.Rows}) do not fit layer {p.Target} [{shape.Out}, {shape.In}]");
                if (!blocks.TryGetValue(p.Target, out var list)) blocks[p.Target] = list = [];
                // A module whose A equals an earlier one's (split q/k/v with a copied lora_A) writes into that block's columns.
                var block = list.FirstOrDefault(b => b.Down.shape[0] == rank && !b.Overlaps(p) && b.Down.eq(down).all().item<bool>());
                if (block is null) list.Add(block = new Block(down, zeros(shape.Out, rank), shape.Out));
                block.Up.narrow(0, p.DstRow, p.Rows).add_(up.narrow(0, p.SrcRow, p.Rows), alpha: factor);
                block.Mark(p);
            }
        }
        var deltas = new Dictionary<string, LoraDelta>(StringComparer.Ordinal);
        foreach (var (target, list) in blocks)
        {
            var d = Own(list.Count == 1 ? list[0].Down : cat(list.Select(b => b.Down).ToList(), 0));
            var u = Own(list.Count == 1 ? list[0].Up : cat(list.Select(b => b.Up).ToList(), 1));
            deltas[target] = new LoraDelta(d, u);
        }
        return new LoraAdapter(name, format, targets, deltas, modules.Count, [.. ranks], [.. alphas]);

        // A fresh contiguous copy per target in the model's dtype and device (a Down shared by several targets is copied for each).
        Tensor Own(Tensor t)
        {
            var c = t.to(dtype, device).contiguous();
            if (c.Handle == t.Handle) c = t.clone();
            return c.DetachFromDisposeScope();
        }
    }

    static Tensor Finite(SafetensorsFile file, string key)
    {
        var t = file.Load(key, ScalarType.Float32);
        if (!t.isfinite().all().item<bool>()) throw new InvalidDataException($"key '{key}': holds non-finite values (NaN or infinity)");
        return t;
    }

    static string Hint(string key) =>
        key.Contains("lora_te", StringComparison.Ordinal) || key.StartsWith("text_encoder", StringComparison.Ordinal)
            ? " (text-encoder adapters are not supported: only the transformer takes adapters)" : "";

    /// <summary>Columns of one rank block while a file is read: its Down, its Up (float32, factor folded in), and the rows written.</summary>
    sealed class Block(Tensor down, Tensor up, long outRows)
    {
        readonly bool[] written = new bool[outRows];
        public Tensor Down { get; } = down;
        public Tensor Up { get; } = up;
        public bool Overlaps(LoraPiece p) => Enumerable.Range((int)p.DstRow, (int)p.Rows).Any(r => written[r]);
        public void Mark(LoraPiece p) { for (long r = p.DstRow; r < p.DstRow + p.Rows; r++) written[r] = true; }
    }

    public void Dispose()
    {
        foreach (var d in deltas.Values) { d.Down.Dispose(); d.Up.Dispose(); }
        deltas.Clear();
    }
}
