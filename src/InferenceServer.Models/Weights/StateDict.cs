using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.ExceptionServices;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>A module tensor whose checkpoint tensor has another shape.</summary>
public sealed record ShapeMismatch(string Name, long[] Expected, long[] Actual)
{
    public override string ToString() => $"{Name}: module [{string.Join(", ", Expected)}], checkpoint [{string.Join(", ", Actual)}]";
}

/// <summary>How a checkpoint matched a module: module keys it lacks, keys the module lacks, and shape mismatches.</summary>
public sealed record LoadReport(IReadOnlyList<string> Missing, IReadOnlyList<string> Unexpected, IReadOnlyList<ShapeMismatch> Mismatched)
{
    /// <summary>Tensors copied into the module.</summary>
    public int Loaded { get; init; }

    public bool IsClean => Missing.Count == 0 && Unexpected.Count == 0 && Mismatched.Count == 0;

    /// <summary>Throws an <see cref="InvalidDataException"/> listing every problem unless the report is clean.</summary>
    public void ThrowIfNotClean(string what)
    {
        if (!IsClean) throw new InvalidDataException($"{what}: checkpoint does not match the module: {this}");
    }

    public override string ToString()
    {
        if (IsClean) return $"{Loaded} tensors loaded";
        var parts = new List<string>();
        if (Missing.Count > 0) parts.Add($"{Missing.Count} missing ({List(Missing)})");
        if (Unexpected.Count > 0) parts.Add($"{Unexpected.Count} unexpected ({List(Unexpected)})");
        if (Mismatched.Count > 0) parts.Add($"{Mismatched.Count} with another shape ({List(Mismatched.Select(m => m.ToString()).ToList())})");
        return string.Join("; ", parts);
    }

    static string List(IReadOnlyList<string> names) =>
        names.Count <= 20 ? string.Join(", ", names) : string.Join(", ", names.Take(20)) + $", ... and {names.Count - 20} more";
}

/// <summary>Loads checkpoint tensors into a module's parameters and persistent buffers, by name.</summary>
public static class StateDict
{
    /// <summary>
    /// Threads reading tensors at once when the source allows it (<see cref="ITensorSource.ConcurrentReads"/>). Reads from a
    /// warm page cache are memory copies (one per core); cold ones wait on the disk, which serves several requests at once.
    /// </summary>
    public static int ReadThreads { get; set; } = Math.Clamp(Environment.ProcessorCount, 2, 8);

    /// <summary>
    /// Copies every checkpoint tensor into the module tensor of the same name (after <paramref name="keyMap"/>, which
    /// turns a checkpoint key into a module key, or null to skip it), converting on load. With
    /// <paramref name="dtype"/> the module's floating-point parameters and buffers are first converted to it;
    /// otherwise each tensor keeps its module dtype (a BF16 file loads into an FP32 module as FP32).
    /// Each tensor is read straight into the module's storage (<see cref="ITensorSource.ReadInto"/>), or becomes a view of its
    /// memory-mapped file when the source allows it (<see cref="ITensorSource.TryMap"/>, CPU, same dtype), on
    /// <see cref="ReadThreads"/> threads in file order when the source allows it, and reported to the
    /// <see cref="LoadMeter"/> scope open on this thread.
    /// strict: any missing, unexpected or mis-shaped key throws an <see cref="InvalidDataException"/> naming them,
    /// before anything is copied. Not strict: what matches is loaded and the report says what did not. Either way a tensor
    /// holding NaN or infinity throws an <see cref="InvalidDataException"/> naming it (<see cref="FiniteCheck"/>).
    /// </summary>
    public static LoadReport Load(nn.Module module, ITensorSource source, bool strict = true, Func<string, string?>? keyMap = null, ScalarType? dtype = null)
    {
        var targets = module.state_dict();
        var pairs = new List<(TensorEntry Entry, string ModuleKey, Tensor Target)>();
        var unexpected = new List<string>();
        var mismatched = new List<ShapeMismatch>();
        var seen = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var e in source.Entries)
        {
            string? key = keyMap is null ? e.Name : keyMap(e.Name);
            if (key is null) continue;
            if (!targets.TryGetValue(key, out var target)) { unexpected.Add(e.Name); continue; }
            if (!seen.TryAdd(key, e.Name))
                throw new InvalidDataException($"checkpoint keys '{seen[key]}' and '{e.Name}' both map to module key '{key}'");
            if (!target.shape.SequenceEqual(e.Shape)) { mismatched.Add(new ShapeMismatch(key, target.shape, e.Shape)); continue; }
            pairs.Add((e, key, target));
        }
        var missing = targets.Keys.Where(k => !seen.ContainsKey(k)).ToList();
        var report = new LoadReport(missing, unexpected, mismatched) { Loaded = pairs.Count };
        string where = source is SafetensorsFile f ? f.Path : source is ShardedSafetensors s ? s.Path : "checkpoint";
        if (strict) report.ThrowIfNotClean(where);
        if (pairs.Any(p => p.Target.device_type == DeviceType.META))
            throw new InvalidOperationException($"{where}: the module is on the meta device; materialize it first (MetaModules.Materialize)");

        if (dtype is { } d)
        {
            module.to(d);
            targets = module.state_dict(); // conversion replaced the tensors
            pairs = pairs.Select(p => (p.Entry, p.ModuleKey, targets[p.ModuleKey])).ToList();
        }
        var meter = LoadMeter.Current; // the workers below report into the scope of this thread
        meter?.Plan(pairs.Sum(p => p.Entry.ByteLength));
        void LoadOne((TensorEntry Entry, string ModuleKey, Tensor Target) p)
        {
            using var noGrad = no_grad(); // grad mode is per thread
            long start = Stopwatch.GetTimestamp();
            bool isMapped = false;
            if (p.Target.device_type == DeviceType.CPU && p.Entry.DType is not (SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2)
                && p.Entry.DType.ToScalarType() == p.Target.dtype && source.TryMap(p.Entry.Name, out var mapped))
            {
                using (mapped) p.Target.set_(mapped); // zero-copy: the parameter's storage is now the file's pages (its own empty storage is freed)
                MappedPages.Populate(p.Target);        // the pages in one call, before the check touches them
                isMapped = true;
            }
            else source.ReadInto(p.Entry.Name, p.Target);
            long read = Stopwatch.GetTimestamp();
            meter?.Read(p.Entry.ByteLength, read - start, isMapped);
            // A NaN or infinite weight turns every image black (or noise) with no error: refuse it here, naming the tensor.
            // Checked where the weight now lives, right after the read (still in cache; on a GPU it costs nothing next to the copy).
            bool finite = FiniteCheck.AllFinite(p.Target);
            meter?.Checked(Stopwatch.GetTimestamp() - read);
            if (!finite) throw new InvalidDataException($"{where}: tensor '{p.Entry.Name}' holds non-finite values (NaN or infinity); the checkpoint is damaged");
        }
        if (source.ConcurrentReads && ReadThreads > 1 && pairs.Count > 1)
        {
            // In file order, one tensor at a time per thread: the disk sees near-sequential reads, several in flight.
            try { Parallel.ForEach(Partitioner.Create(pairs, EnumerablePartitionerOptions.NoBuffering), new ParallelOptions { MaxDegreeOfParallelism = ReadThreads }, LoadOne); }
            catch (AggregateException e) { ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw(); }
        }
        else foreach (var p in pairs) LoadOne(p);
        return report;
    }
}
