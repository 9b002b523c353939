using Xunit.Sdk;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Shared;

/// <summary>Element-wise closeness as the fixtures define it: |actual - expected| &lt;= atol + rtol * |expected|.</summary>
public static class TensorAssert
{
    public static void Close(Tensor actual, Tensor expected, double atol, double rtol, string name)
    {
        if (!actual.shape.SequenceEqual(expected.shape))
            throw new XunitException($"{name}: shape [{string.Join(", ", actual.shape)}] != expected [{string.Join(", ", expected.shape)}]");
        using var scope = NewDisposeScope();
        var a = actual.to(ScalarType.Float64, CPU);
        var e = expected.to(ScalarType.Float64, CPU);
        if (a.isnan().any().item<bool>()) throw new XunitException($"{name}: contains NaN");
        var diff = (a - e).abs();
        var excess = diff - (atol + rtol * e.abs());
        if (excess.numel() == 0 || excess.max().item<double>() <= 0) return;
        long worst = excess.flatten().argmax().item<long>();
        var bad = (excess > 0).sum().item<long>();
        throw new XunitException(
            $"{name}: {bad} of {excess.numel()} elements out of tolerance (atol {atol}, rtol {rtol}); " +
            $"max |diff| {diff.max().item<double>():G4}; worst at flat index {worst}: actual {a.flatten()[worst].item<double>():G6}, expected {e.flatten()[worst].item<double>():G6}");
    }

    /// <summary>Largest absolute difference (for reporting measured errors).</summary>
    public static double MaxAbsDiff(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        return (actual.to(ScalarType.Float64, CPU) - expected.to(ScalarType.Float64, CPU)).abs().max().item<double>();
    }
}
