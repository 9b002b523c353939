using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// An LRU map of tensors bounded by their total bytes. It keeps its own handle of each value; <see cref="TryGet"/> hands out
/// a new handle (an alias of the same storage, owned by the caller's dispose scope), so eviction never frees a tensor in use.
/// </summary>
public sealed class TensorLruCache<TKey>(long maxBytes) : IDisposable where TKey : notnull
{
    readonly LinkedList<(TKey Key, Tensor Value, long Bytes)> order = new();
    readonly Dictionary<TKey, LinkedListNode<(TKey Key, Tensor Value, long Bytes)>> map = new();

    public long Bytes { get; private set; }
    public int Count => map.Count;
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    /// <summary>An alias of the cached tensor, owned by the caller.</summary>
    public bool TryGet(TKey key, out Tensor value)
    {
        if (map.TryGetValue(key, out var node))
        {
            order.Remove(node);
            order.AddFirst(node);
            value = node.Value.Value.alias();
            Hits++;
            return true;
        }
        Misses++;
        value = null!;
        return false;
    }

    /// <summary>Stores a handle of <paramref name="value"/> (the caller keeps its own), evicting the least recently used.</summary>
    public void Add(TKey key, Tensor value)
    {
        long bytes = value.numel() * value.ElementSize;
        if (bytes > maxBytes || map.ContainsKey(key)) return;
        value = value.alias().DetachFromDisposeScope();
        while (Bytes + bytes > maxBytes && order.Last is { } last)
        {
            order.RemoveLast();
            map.Remove(last.Value.Key);
            Bytes -= last.Value.Bytes;
            last.Value.Value.Dispose();
        }
        map[key] = order.AddFirst((key, value, bytes));
        Bytes += bytes;
    }

    public void Dispose()
    {
        foreach (var e in order) e.Value.Dispose();
        order.Clear();
        map.Clear();
        Bytes = 0;
    }
}
