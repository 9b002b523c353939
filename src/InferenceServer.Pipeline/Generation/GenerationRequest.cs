using InferenceServer.Models.Lora;
using InferenceServer.Pipeline.Images;

namespace InferenceServer.Pipeline.Generation;

/// <summary>One generation: text-to-image when <see cref="References"/> is empty, an edit otherwise (same code path).</summary>
public sealed record GenerationRequest
{
    public required string Prompt { get; init; }
    /// <summary>Encoded reference images (PNG, JPEG, WebP), at most <see cref="PipelineOptions.MaxReferences"/>.</summary>
    public IReadOnlyList<byte[]> References { get; init; } = [];
    public SizeRequest Size { get; init; } = new();
    /// <summary>Number of images; image i uses seed <c>Seed + i</c>.</summary>
    public int Count { get; init; } = 1;
    /// <summary>Null: one is picked and reported. 0 to <see cref="MaxSeed"/>.</summary>
    public long? Seed { get; init; }
    /// <summary>Seeds are 0 to 2^53: exact in JSON doubles, so every client can echo them back, and seed + i never overflows.</summary>
    public const long MaxSeed = 1L << 53;
    /// <summary>Null: the model card's default.</summary>
    public int? Steps { get; init; }
    /// <summary>Null: the card's guidance. Used only by models that embed guidance, or by non-distilled (CFG) models.</summary>
    public double? Guidance { get; init; }
    public ImageFormat Format { get; init; } = ImageFormat.Png;
    public int? Quality { get; init; }
    /// <summary>LoRA adapters for this request (loaded for this pipeline's model with <see cref="GenerationPipeline.LoadAdapter"/>), at most <see cref="PipelineOptions.MaxLorasPerRequest"/>.</summary>
    public IReadOnlyList<LoraUse> Loras { get; init; } = [];
    /// <summary>At most this many text tokens (the warm-up's short text, never a client's); null: the family's own length. Not cached.</summary>
    internal int? TextTokens { get; init; }
}
