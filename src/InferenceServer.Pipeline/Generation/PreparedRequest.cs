using InferenceServer.Pipeline.Images;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// What decides whether requests can share one DiT batch: output size, steps (hence the schedule), guidance, and the
/// reference token shapes. <paramref name="References"/> is the per-reference latent grid after capping and centre
/// cropping, "WxH" joined by ",", in order ("" for text-to-image).
/// </summary>
public readonly record struct BatchKey(int Width, int Height, int Steps, double? Guidance, string References);

/// <summary>
/// A request validated once, its references decoded and its size, steps, guidance and seed resolved, made by
/// <see cref="GenerationPipeline.Prepare"/>. No tensor inside: cheap to hold while it waits for a batch.
/// </summary>
public sealed class PreparedRequest
{
    internal PreparedRequest(GenerationRequest request, int width, int height, int steps, double? guidance, long seed,
        IReadOnlyList<RgbImage> references, long referenceCap, BatchKey key, double decodeMilliseconds)
    {
        Request = request; Width = width; Height = height; Steps = steps; Guidance = guidance; Seed = seed;
        References = references; ReferenceCap = referenceCap; Key = key; DecodeMilliseconds = decodeMilliseconds;
    }

    public GenerationRequest Request { get; }
    public int Width { get; }
    public int Height { get; }
    public int Steps { get; }
    /// <summary>Null when the model neither embeds guidance nor uses CFG.</summary>
    public double? Guidance { get; }
    /// <summary>Image i uses seed <c>Seed + i</c>.</summary>
    public long Seed { get; }
    public int Count => Request.Count;
    /// <summary>Requests with equal keys can share a batch.</summary>
    public BatchKey Key { get; }

    /// <summary>The decoded references (uncapped, as sent).</summary>
    internal IReadOnlyList<RgbImage> References { get; }
    /// <summary>Pixel cap of each reference (one reference: the single cap, several: the multi cap).</summary>
    internal long ReferenceCap { get; }
    internal double DecodeMilliseconds { get; }
}

/// <summary>One request of a batch, its own cancellation, and how often it wants a preview (0: never).</summary>
public sealed record BatchEntry(PreparedRequest Request, CancellationToken CancellationToken, int PreviewEvery = 0);

/// <summary>
/// Entry <paramref name="Entry"/> (index into the batch's entries) finished 0-based step <paramref name="Step"/> of
/// <paramref name="Steps"/>. <paramref name="Preview"/>: a JPEG (longest side at most 256) of the entry's first image's
/// x0 estimate <c>x - t v</c> decoded by the VAE, on steps where (Step + 1) is a multiple of the entry's PreviewEvery; null otherwise.
/// </summary>
public sealed record BatchProgress(int Entry, int Step, int Steps, EncodedImage? Preview);

/// <summary>Exactly one of <paramref name="Result"/> and <paramref name="Error"/> is set; a cancelled entry gets an <see cref="OperationCanceledException"/>.</summary>
public sealed record BatchOutcome(GenerationResult? Result, Exception? Error)
{
    public bool Succeeded => Result is not null;
}
