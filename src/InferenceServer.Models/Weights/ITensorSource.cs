using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>A set of named tensors read on demand: one safetensors file, or a sharded checkpoint.</summary>
public interface ITensorSource : IDisposable
{
    /// <summary>Every tensor, in file order.</summary>
    IReadOnlyList<TensorEntry> Entries { get; }

    /// <summary>Looks a tensor up by name.</summary>
    bool TryGetEntry(string name, out TensorEntry entry);

    /// <summary>
    /// Reads one tensor (only its own bytes are touched). Without <paramref name="dtype"/> it keeps the stored type
    /// (FP8 is decoded to float32); with one it is converted on load.
    /// </summary>
    Tensor Load(string name, ScalarType? dtype = null, Device? device = null);

    /// <summary>Reads one tensor's bytes as stored, as a uint8 tensor of shape <c>[ByteLength]</c> (FP8 codes, for example).</summary>
    Tensor LoadRaw(string name);

    /// <summary>
    /// Reads one tensor into <paramref name="destination"/> (its shape; any dtype and device), converting as
    /// <see cref="Load"/> does. Files override it to read the bytes straight into a CPU destination of the stored dtype,
    /// with no intermediate tensor; this default loads and copies.
    /// </summary>
    void ReadInto(string name, Tensor destination) => LoadAndCopy(this, name, destination);

    /// <summary>The plain <see cref="ReadInto"/>: <see cref="Load"/> (converted to a float destination's dtype), then a copy; for the cases a fast path does not cover.</summary>
    static void LoadAndCopy(ITensorSource source, string name, Tensor destination)
    {
        using var t = source.Load(name, destination.is_floating_point() ? destination.dtype : null);
        using (no_grad()) destination.copy_(t);
    }

    /// <summary>
    /// The tensor as a view of a copy-on-write memory map of its file, in its stored dtype and shape, when the source was
    /// opened with a <see cref="WeightMapping"/> that allows it (and the bytes are aligned for the dtype); false otherwise.
    /// Writes to the view (a merged LoRA) go to private pages, never to the file.
    /// </summary>
    bool TryMap(string name, out Tensor mapped)
    {
        mapped = null!;
        return false;
    }

    /// <summary>True when <see cref="ReadInto"/> may run on several threads at once (sources that cache a tensor between calls may not).</summary>
    bool ConcurrentReads => false;
}
