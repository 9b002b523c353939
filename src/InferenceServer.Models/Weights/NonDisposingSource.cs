using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>A view of a tensor source whose Dispose does nothing: hand it to a wrapper (key maps, quantizers) that disposes its input while the caller keeps owning the source.</summary>
internal sealed class NonDisposingSource(ITensorSource inner) : ITensorSource
{
    public IReadOnlyList<TensorEntry> Entries => inner.Entries;
    public bool TryGetEntry(string name, out TensorEntry entry) => inner.TryGetEntry(name, out entry);
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null) => inner.Load(name, dtype, device);
    public Tensor LoadRaw(string name) => inner.LoadRaw(name);
    public void ReadInto(string name, Tensor destination) => inner.ReadInto(name, destination);
    public bool ConcurrentReads => inner.ConcurrentReads;
    public bool TryMap(string name, out Tensor mapped) => inner.TryMap(name, out mapped);
    public void Dispose() { }
}
