using InferenceServer.Models;
using InferenceServer.Models.Lora;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// How a family lays out its latent tokens: one token covers <paramref name="PixelsPerToken"/> x <paramref name="PixelsPerToken"/>
/// output pixels and has <paramref name="TokenChannels"/> channels (FLUX.2: 16 px, 128 = 32 AE channels x 2x2;
/// Z-Image: 16 px, 64 = 16 AE channels x 2x2).
/// </summary>
public sealed record LatentGeometry(int PixelsPerToken, int TokenChannels)
{
    /// <summary>Image tokens of a <paramref name="width"/> x <paramref name="height"/> output.</summary>
    public long Tokens(int width, int height) => (long)(width / PixelsPerToken) * (height / PixelsPerToken);
}

/// <summary>
/// One loaded model of one family, as the pipeline drives it. The pipeline owns batching, caching, the sampling loop
/// (<see cref="SamplingLoop"/>), cancellation, previews, timings and image encoding; a backend owns only what differs
/// between families: its text features, reference latents, noise, schedule, the model call and the decoder.
/// All tensors are on <see cref="Device"/> unless said otherwise. Adding a family = one backend + one registry line
/// (<see cref="ModelFamilies"/>).
/// </summary>
public interface IFamilyBackend : IDisposable
{
    /// <summary>Registry name of the family ("flux2", "zimage").</summary>
    string Family { get; }
    /// <summary>The model card the folder was matched to.</summary>
    string CardName { get; }
    /// <summary>Where the weights were loaded from.</summary>
    string Directory { get; }
    Device Device { get; }
    ScalarType DType { get; }
    /// <summary>How the transformer's weights are stored and multiplied (for ListModels and the log).</summary>
    string WeightFormat { get; }
    /// <summary>One line per component: what was loaded from where.</summary>
    IReadOnlyList<string> LoadReport { get; }
    LatentGeometry Geometry { get; }
    SamplingDefaults Sampling { get; }
    /// <summary>False for text-to-image-only families: a request with references is refused before any model work.</summary>
    bool AcceptsReferences { get; }
    /// <summary>True when the request's guidance reaches the model (embedded guidance or CFG); false: it is ignored and not reported.</summary>
    bool UsesGuidance { get; }
    /// <summary>How decoded pixels in [-1, 1] become bytes (FLUX.2 truncates, diffusers-style models round half to even).</summary>
    Images.PixelRounding Rounding { get; }

    /// <summary>The transformer's adapter runtime (hooks on every adaptable linear, made with the backend; its targets are safe to read from any thread).</summary>
    LoraRuntime Lora { get; }

    /// <summary>The prompt's text features (family-specific shape, in the model dtype); cached by the pipeline by prompt.</summary>
    /// <param name="maxTokens">At most this many text tokens instead of the family's own length (the warm-up's short text); null: the family's.</param>
    Tensor EncodePrompt(string prompt, int? maxTokens = null);

    /// <summary>Latent of one reference image [1, 3, H, W] in [-1, 1] (H, W multiples of <see cref="LatentGeometry.PixelsPerToken"/>); cached by the pipeline.</summary>
    Tensor EncodeReference(Tensor pixels);

    /// <summary>Sigmas (flow time, 1 = noise, 0 = clean) of a <paramref name="steps"/>-step run: steps + 1 values from 1 down to 0.</summary>
    float[] Schedule(int steps, long imageTokens);

    /// <summary>The initial noise of one image as tokens [1, h*w, C], float32 on the CPU, from a generator seeded with <paramref name="seed"/>.</summary>
    Tensor Noise(long seed, long h, long w);

    /// <summary>
    /// The model conditioned on a batch of rows (row r: its prompt features and reference latents), ready to give velocities.
    /// <paramref name="prompts"/> encodes (through the pipeline's cache) any other prompt the family needs, e.g. the empty
    /// negative prompt of CFG.
    /// </summary>
    IDenoiser Condition(IReadOnlyList<RowConditioning> rows, double? guidance, long h, long w, Func<string, Tensor> prompts);

    /// <summary>Pixels [1, 3, H, W] in [-1, 1] of one image's tokens [1, h*w, C].</summary>
    Tensor Decode(Tensor tokens, long h, long w);

    /// <summary>FLOPs of one DiT forward of one image (no CFG doubling) with <paramref name="prompt"/>'s text tokens, for benchmarks.</summary>
    DitFlops Flops(long imageTokens, string prompt);
}

/// <summary>FLOPs of one DiT forward: the linear layers, the attention products, and how they were counted.</summary>
public sealed record DitFlops(double Linear, double Attention, long TextTokens, string Formula)
{
    public double Total => Linear + Attention;
}

/// <summary>What one row (one image) of a batch is conditioned on.</summary>
/// <param name="Prompt">From <see cref="IFamilyBackend.EncodePrompt"/>.</param>
/// <param name="References">From <see cref="IFamilyBackend.EncodeReference"/>, in order (empty for text-to-image).</param>
public sealed record RowConditioning(Tensor Prompt, IReadOnlyList<Tensor> References);

/// <summary>
/// A conditioned model for the rows of one batch: the flow velocity dx/dsigma of the image tokens, with the family's own
/// guidance applied. Rows may leave between steps (<see cref="KeepRows"/>).
/// </summary>
public interface IDenoiser : IDisposable
{
    /// <summary>[R, L, C] float32 tokens at <paramref name="sigma"/> -> [R, L, C] float32 velocity (the Euler step is x + (sigma_next - sigma) v).</summary>
    /// <param name="step">0-based step (some guidance rules depend on it through sigma; the index is given for tracing).</param>
    Tensor Velocity(Tensor x, float sigma, int step);

    /// <summary>Keeps only the given rows (indices into the current rows, ascending) for the next steps.</summary>
    void KeepRows(Tensor rows);
}
