using InferenceServer.Models.Runtime;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// One finished sampler step. The tensors are valid only inside the callback (they are disposed with the step);
/// clone what you keep.
/// </summary>
/// <param name="Index">0-based step.</param>
/// <param name="Count">Number of steps.</param>
/// <param name="TCurr">Sigma (flow time) the model saw.</param>
/// <param name="TPrev">Sigma reached.</param>
/// <param name="Latents">[R, L_img, C] image tokens after the step (float32), rows as they are after any that left.</param>
/// <param name="Velocity">[R, L_img, C] the (guided) velocity used for the step.</param>
/// <param name="Before">[R, L_img, C] the tokens the step started from (x0 estimate: <c>Before - TCurr * Velocity</c>).</param>
public sealed record DenoiseStep(int Index, int Count, float TCurr, float TPrev, Tensor Latents, Tensor Velocity, Tensor Before);

/// <summary>
/// THE flow-matching Euler loop: serving (<see cref="GenerationPipeline"/>), warm-up, the CLI and the parity tests all run
/// it, for every family. x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v(x_i, sigma_i); latents stay float32 whatever the model
/// dtype; each step runs in its own dispose scope. Before every step <c>leaving</c> may drop rows (cancelled requests):
/// the latents and the denoiser keep the others. No host synchronisation inside (timesteps are host floats) except
/// <see cref="ComputeDevice.SyncForTiming"/> for benchmarks.
/// </summary>
public static class SamplingLoop
{
    /// <param name="denoiser">The conditioned model (not disposed here).</param>
    /// <param name="x">[R, L, C] initial tokens on the model's device (not modified, not disposed).</param>
    /// <param name="sigmas">steps + 1 values, 1 -> 0.</param>
    /// <param name="keepRows">Before step i: the current rows to keep (ascending), or null to keep all; an empty array ends the loop.</param>
    /// <param name="onStep">After every step, with the rows still in the batch.</param>
    /// <returns>[R', L, C] float32 (the rows still in the batch; caller owns).</returns>
    public static Tensor Run(IDenoiser denoiser, Tensor x, IReadOnlyList<float> sigmas, Func<int, int[]?>? keepRows = null,
        Action<DenoiseStep>? onStep = null, CancellationToken cancellationToken = default)
    {
        if (sigmas.Count < 2) throw new ArgumentException($"need at least 2 sigmas, got {sigmas.Count}", nameof(sigmas));
        var device = x.device;
        x = x.dtype == ScalarType.Float32 ? x.alias() : x.to(ScalarType.Float32); // an owned handle: the caller's tensor stays theirs
        try
        {
            for (int i = 0; i < sigmas.Count - 1; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (keepRows?.Invoke(i) is { } keep)
                {
                    if (keep.Length == 0) break;
                    if (keep.Length < x.shape[0])
                    {
                        using var idx = tensor(keep.Select(r => (long)r).ToArray(), device: device);
                        var kept = x.index_select(0, idx);
                        x.Dispose();
                        x = kept;
                        denoiser.KeepRows(idx);
                    }
                }
                float sigma = sigmas[i], next = sigmas[i + 1];
                using var scope = NewDisposeScope();
                var v = denoiser.Velocity(x, sigma, i).to(ScalarType.Float32);  // [R, L, C]
                var stepped = EulerStep(x, v, sigma, next);
                ComputeDevice.SyncForTiming(device);                            // benchmarks only; no-op otherwise
                onStep?.Invoke(new DenoiseStep(i, sigmas.Count - 1, sigma, next, stepped, v, x));
                stepped.MoveToOuterDisposeScope();
                x.Dispose();
                x = stepped;
            }
            cancellationToken.ThrowIfCancellationRequested();
            return x;
        }
        catch
        {
            x.Dispose();
            throw;
        }
    }

    /// <summary>The Euler update <c>x + (sigma_next - sigma) v</c> (a Python float step on a float32 tensor, as the references).</summary>
    public static Tensor EulerStep(Tensor x, Tensor velocity, float sigma, float sigmaNext) => x + velocity * ((double)sigmaNext - sigma);
}
