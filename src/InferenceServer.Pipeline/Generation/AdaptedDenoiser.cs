using InferenceServer.Models.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// A family's denoiser with per-row LoRA adapters: every velocity call runs inside <see cref="LoraRuntime.Use"/> with the
/// adapters of the rows still in the batch, so any family's model picks them up through its linears' hooks.
/// </summary>
sealed class AdaptedDenoiser(IDenoiser inner, LoraRuntime runtime, IReadOnlyList<IReadOnlyList<LoraUse>> rows) : IDenoiser
{
    IReadOnlyList<IReadOnlyList<LoraUse>> rows = rows;

    public Tensor Velocity(Tensor x, float sigma, int step)
    {
        using var adapters = runtime.Use(rows);
        return inner.Velocity(x, sigma, step);
    }

    public void KeepRows(Tensor keep)
    {
        var idx = keep.to(DeviceType.CPU).data<long>().ToArray();
        rows = [.. idx.Select(i => rows[(int)i])];
        inner.KeepRows(keep);
    }

    public void Dispose() => inner.Dispose();
}
