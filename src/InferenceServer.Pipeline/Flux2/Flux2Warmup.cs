using InferenceServer.Models.Flux2;
using InferenceServer.Models.Runtime;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>
/// One small pass through every component on the model's device, through the same code the pipeline runs (prompt
/// encode at the full text length, one sampler step on a 64x64-pixel latent, VAE decode), then a device synchronise.
/// On CUDA this creates the cuBLAS/cuDNN handles, loads the kernels and primes the caching allocator, so the first
/// request does not pay for them. Call it once after loading; it changes no state of the model.
/// </summary>
public static class Flux2Warmup
{
    /// <summary>Runs the pass; returns its wall time in milliseconds.</summary>
    public static double Run(Flux2Model model)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var tp = model.Tokenizer.EncodePrompt("warm-up", model.TextEncoder.Config.MaxLength);
        var txt = model.TextEncoder.Encode([tp]).to(model.Transformer.DType);                   // [1, Lt, ctx]
        var (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(txt);
        var (noise, imgIds) = Flux2Packing.BatchedPrcImg(zeros(1, model.Transformer.Config.InChannels, 4, 4)); // [1, 16, 128]
        var latents = FlowSampler.Denoise(model.Transformer, noise, imgIds, ctx, ctxIds, [1f, 0f], 1f); // [1, 16, 128]
        model.Vae.Decode(Flux2Packing.Unpack(latents, imgIds));                                  // [1, 3, 64, 64]
        ComputeDevice.Synchronize(model.Device);
        return sw.Elapsed.TotalMilliseconds;
    }
}
