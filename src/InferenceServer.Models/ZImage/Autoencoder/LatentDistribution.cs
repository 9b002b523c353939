using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// diffusers <c>DiagonalGaussianDistribution</c> of the encoder's moments (VAE space, float32, <c>[B, z, h, w]</c> each):
/// <c>mean, logvar = moments.chunk(2, dim=1)</c>, <c>logvar</c> clamped to [-30, 20], <c>std = exp(0.5 * logvar)</c>.
/// Owns its tensors.
/// </summary>
public sealed class LatentDistribution : IDisposable
{
    /// <summary>The mode (what <see cref="ZImageAutoencoder.Encode"/> uses).</summary>
    public Tensor Mean { get; }

    /// <summary>Clamped log-variance.</summary>
    public Tensor LogVar { get; }

    /// <summary><c>exp(0.5 * logvar)</c>.</summary>
    public Tensor Std { get; }

    /// <summary>Splits <paramref name="moments"/> <c>[B, 2z, h, w]</c> (not disposed).</summary>
    public LatentDistribution(Tensor moments)
    {
        long z = moments.shape[1] / 2;
        using var scope = NewDisposeScope();
        Mean = moments.narrow(1, 0, z).contiguous().MoveToOuterDisposeScope();
        LogVar = moments.narrow(1, z, z).clamp(-30.0, 20.0).MoveToOuterDisposeScope();
        Std = LogVar.mul(0.5).exp_().MoveToOuterDisposeScope();
    }

    /// <summary><c>mean + std * eps</c> for a given standard-normal <paramref name="eps"/> of the mean's shape.</summary>
    public Tensor Sample(Tensor eps)
    {
        if (!eps.shape.SequenceEqual(Mean.shape))
            throw new ArgumentException($"eps [{string.Join(", ", eps.shape)}] must have the mean's shape [{string.Join(", ", Mean.shape)}]", nameof(eps));
        using var e = eps.to(Mean.dtype, Mean.device);
        return Std.mul(e).add_(Mean);
    }

    /// <summary>A sample with noise drawn from <paramref name="generator"/> (<c>torch.randn(mean.shape, generator)</c>).</summary>
    public Tensor Sample(Generator? generator = null)
    {
        using var eps = randn(Mean.shape, Mean.dtype, Mean.device, generator: generator);
        return Sample(eps);
    }

    public void Dispose()
    {
        Mean.Dispose();
        LogVar.Dispose();
        Std.Dispose();
    }
}
