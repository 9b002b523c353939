using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// Random tensors for random-weight checkpoints of any model, one tensor at a time (streaming writers never hold a
/// full-size model): each tensor comes from its own generator seeded by (checkpoint seed, key), so its value does not
/// depend on the layout, shard split or write order.
/// </summary>
public static class RandomWeights
{
    /// <summary>Per-tensor seed: FNV-1a of the key mixed with the checkpoint seed.</summary>
    public static ulong TensorSeed(long seed, string name)
    {
        ulong h = 14695981039346656037UL ^ (ulong)seed;
        foreach (char ch in name) { h ^= ch; h *= 1099511628211UL; }
        return h & 0x7FFF_FFFF_FFFF_FFFFUL;
    }

    /// <summary>
    /// The value of <paramref name="s"/> for <paramref name="seed"/>, drawn in float32 and returned in the spec's dtype, with the
    /// fixtures' conventions: a 1-D <c>*.bias</c> ~ 0.1 N(0,1); any other 1-D tensor (a norm weight) ~ 1 + 0.1 N(0,1); a matrix or
    /// higher ~ N(0,1) / sqrt(fan-in) (fan-in = product of the dimensions after the first), so activations keep their scale.
    /// </summary>
    public static Tensor Tensor(TensorSpec s, long seed)
    {
        using var scope = NewDisposeScope();
        using var gen = new Generator(TensorSeed(seed, s.Name));
        var r = randn(s.Shape, ScalarType.Float32, generator: gen);
        long fanIn = s.Shape.Skip(1).Aggregate(1L, (a, b) => a * b);
        r = s.Shape.Length == 1
            ? s.Name.EndsWith(".bias", StringComparison.Ordinal) ? r * 0.1 : r * 0.1 + 1
            : r * Math.Pow(fanIn, -0.5);
        return r.to(s.DType.ToScalarType()).MoveToOuterDisposeScope();
    }
}
