using InferenceServer.Pipeline.Images;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// The limits of the pipeline, in one record: every request is checked against it once, in <see cref="GenerationPipeline.Prepare"/>
/// (the server maps its configuration onto it; the front ends only parse).
/// </summary>
public sealed record PipelineOptions
{
    public int MaxReferences { get; init; } = 10;
    public int MaxImages { get; init; } = 16;
    public int MaxSteps { get; init; } = 200;
    public int MaxPromptChars { get; init; } = 8000;
    /// <summary>Upper bound of the guidance scale (lower bound 0).</summary>
    public double MaxGuidance { get; init; } = 100;
    public SizeLimits Sizes { get; init; } = new();
    /// <summary>Byte bound of the prompt-embedding cache (0 disables it).</summary>
    public long PromptCacheBytes { get; init; } = 256L << 20;
    /// <summary>Byte bound of the reference-latent cache (0 disables it).</summary>
    public long ReferenceCacheBytes { get; init; } = 256L << 20;
    /// <summary>Pixel cap of a single reference (BFL encode_image_refs: 2024^2).</summary>
    public long SingleReferencePixels { get; init; } = 2024L * 2024;
    /// <summary>Pixel cap of each of several references (BFL encode_image_refs: 1024^2).</summary>
    public long MultiReferencePixels { get; init; } = 1024L * 1024;
    public ImageLimits Decode { get; init; } = new();
    /// <summary>Adapters one request may name.</summary>
    public int MaxLorasPerRequest { get; init; } = 4;
    /// <summary>Bound of an adapter's |scale|.</summary>
    public double MaxLoraScale { get; init; } = 16;
}
