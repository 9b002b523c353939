using InferenceServer.Models.Quantization;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Lora;

/// <summary>An adapter applied to one request at <paramref name="Scale"/> (0 leaves the base model bit for bit).</summary>
public sealed record LoraUse(LoraAdapter Adapter, double Scale);

/// <summary>
/// Per-request LoRA on one loaded transformer, the base weights untouched: a forward hook on every adaptable linear adds,
/// after the base GEMM ran once for the whole batch, each row's low-rank deltas <c>scale * (x Down^T) Up^T</c> in place,
/// one GEMM pair per row and adapter (see Hook). Rows with different adapters, or none, share one batch. Adapters are applied
/// in name order on every row, so a row's sum is the same whatever else is in the batch. <see cref="Merge"/> instead
/// adds one adapter into the weights (for a model that always runs it).
/// </summary>
public sealed class LoraRuntime : IDisposable
{
    readonly List<Action> hooks = [];  // each removes one hook
    Active? active;

    public LoraRuntime(LoraTargets targets)
    {
        Targets = targets;
        foreach (var (path, layer) in targets.Modules)
        {
            string p = path;
            var remover = layer.register_forward_hook((_, x, y) => Hook(p, x, y)!); // null: output unchanged
            hooks.Add(remover.remove);
        }
    }

    public LoraTargets Targets { get; }

    /// <summary>
    /// Applies <paramref name="rows"/>[r] to request row r for the forwards inside the returned scope (a model batch of
    /// k x R rows, as CFG's [cond; uncond], maps batch row b to request row b mod R). Null when no row has an adapter.
    /// </summary>
    public IDisposable? Use(IReadOnlyList<IReadOnlyList<LoraUse>> rows)
    {
        if (active is not null) throw new InvalidOperationException("adapters are already in use on this model (one batch at a time)");
        var adapters = rows.SelectMany(r => r).Where(u => u.Scale != 0).Select(u => u.Adapter).Distinct()
            .OrderBy(a => a.Name, StringComparer.Ordinal).ToList();
        if (adapters.Count == 0) return null;
        foreach (var a in adapters) Check(a);
        var groups = adapters.Select(a =>
        {
            var scales = new double[rows.Count];
            for (int r = 0; r < rows.Count; r++)
            {
                var uses = rows[r].Where(u => u.Adapter == a).ToList();
                if (uses.Count > 1) throw new ArgumentException($"row {r} uses adapter '{a.Name}' {uses.Count} times", nameof(rows));
                scales[r] = uses.Count == 1 ? uses[0].Scale : 0;
            }
            return new Group(a, scales);
        }).ToArray();
        active = new Active(rows.Count, groups);
        return new Release(this);
    }

    /// <summary>Adds <c>scale * Up @ Down</c> of every layer of <paramref name="adapter"/> into the weights (float32 sum, rounded once; 8-bit layers are dequantized, summed and quantized again).</summary>
    public void Merge(LoraAdapter adapter, double scale)
    {
        Check(adapter);
        using var noGrad = no_grad();
        var layers = Targets.Modules.ToDictionary(m => m.Path, m => m.Layer);
        foreach (var (path, d) in adapter.Deltas)
        {
            using var scope = NewDisposeScope(); // one layer's float32 temporaries at a time (a 4B model's would not fit)
            var delta = d.Up.to(ScalarType.Float32).mm(d.Down.to(ScalarType.Float32)).mul_(scale); // [out, in]
            switch (layers[path])
            {
                case Linear linear:
                    var w = linear.weight!;
                    w.copy_((w.to(ScalarType.Float32) + delta.to(w.device)).to(w.dtype));
                    break;
                case QuantizedLinear q:
                    q.Requantize(q.Dequantize() + delta.to(q.Weight.device));
                    break;
                default: throw new NotSupportedException($"{path}: cannot merge into {layers[path].GetType().Name}");
            }
        }
    }

    void Check(LoraAdapter a)
    {
        if (a.Model != Targets) throw new ArgumentException($"adapter '{a.Name}' was loaded for another model");
        foreach (var (path, d) in a.Deltas)
            if (!Targets.Layers.TryGetValue(path, out var shape) || shape.In != d.Down.shape[1] || shape.Out != d.Up.shape[0])
                throw new ArgumentException($"adapter '{a.Name}' was not resolved for this model (layer {path})");
    }

    Tensor? Hook(string path, Tensor x, Tensor y)
    {
        var a = active;
        if (a is null) return null;
        bool any = false;
        for (int g = 0; g < a.Groups.Length; g++)
        {
            if (!a.Groups[g].Adapter.Deltas.TryGetValue(path, out var d)) continue;
            var sel = a.Select(g, x.shape[0], LoraRows.Current, path);
            if (sel is null) continue;
            if (!any && !y.is_contiguous()) y = y.contiguous();
            any = true;
            var xRows = x.reshape(x.shape[0], -1, x.shape[^1]);                 // [M, L, in] (a view)
            var yRows = y.view(y.shape[0], -1, y.shape[^1]);                    // [M, L, out], a view: written in place
            // Per row, in place: y_j += (s_j (x_j Down^T)) Up^T. One GEMM pair per row keeps a row's numbers independent of
            // the batch (batched GEMMs change the bf16 rounding with the batch size); in place, because a fresh
            // [B, L, out] result per adapted linear cost more in page faults than the GEMMs (CPU: 15 ms vs 1.3 ms a row).
            foreach (var (row, scale) in sel)
            {
                using var t = functional.linear(xRows[row], d.Down);            // [L, R]
                using var scaled = t.to(ScalarType.Float32).mul_(scale).to(t.dtype);
                using var yRow = yRows[row];
                yRow.addmm_(scaled, d.Up.t());
            }
        }
        return any ? y : null;
    }

    sealed record Group(LoraAdapter Adapter, double[] Scales);

    /// <summary>The adapters of the running batch, and per (adapter, input rows, first row) the rows it touches with their scales.</summary>
    sealed class Active(int rows, Group[] groups) : IDisposable
    {
        readonly Dictionary<(int, long, long), (long Row, double Scale)[]?> cache = [];
        public Group[] Groups => groups;

        public (long Row, double Scale)[]? Select(int g, long m, long? offset, string path)
        {
            if (offset is null && m % rows != 0) throw new InvalidOperationException($"LoRA: layer {path} got {m} input rows, the batch has {rows} requests");
            var key = (g, m, offset ?? -1);
            if (cache.TryGetValue(key, out var hit)) return hit;
            var used = new List<(long, double)>();
            for (long j = 0; j < m; j++)
            {
                double s = groups[g].Scales[(int)(((offset ?? 0) + j) % rows)];
                if (s != 0) used.Add((j, s));
            }
            var sel = used.Count == 0 ? null : used.ToArray();
            cache[key] = sel;
            return sel;
        }

        public void Dispose() => cache.Clear();
    }

    sealed class Release(LoraRuntime owner) : IDisposable
    {
        public void Dispose()
        {
            owner.active?.Dispose();
            owner.active = null;
        }
    }

    public void Dispose()
    {
        foreach (var remove in hooks) remove();
        hooks.Clear();
    }
}
