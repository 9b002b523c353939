using InferenceServer.Pipeline.Images;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// What decides whether requests can share one DiT batch: output size, steps (hence the schedule), guidance, and the
/// reference token shapes. <paramref name="References"/> is the per-reference latent grid after capping and centre
/// cropping, "WxH" joined by ",", in order ("" for text-to-image).
/// </summary>
public readonly record struct BatchKey(int Width, int Height, int Steps, double? Guidance, string References);

/// <summary>
/// A request validated once, its size, steps, guidance and seed resolved and its references sized from their headers,
/// made by <see cref="GenerationPipeline.Prepare"/> (references decoded) or <see cref="GenerationPipeline.Plan"/> (not
/// yet: a server admits the request first, then calls <see cref="GenerationPipeline.DecodeReferences"/>). No tensor
/// inside: cheap to hold while it waits for a batch.
/// </summary>
public sealed class PreparedRequest
{
    IReadOnlyList<RgbImage>? references;

    internal PreparedRequest(GenerationRequest request, int width, int height, int steps, double? guidance, long seed,
        IReadOnlyList<(int Width, int Height)> referenceSizes, long referenceCap, BatchKey key)
    {
        Request = request; Width = width; Height = height; Steps = steps; Guidance = guidance; Seed = seed;
        ReferenceSizes = referenceSizes; ReferenceCap = referenceCap; Key = key;
        ReferenceBytes = referenceSizes.Sum(s => 3L * s.Width * s.Height);
        if (referenceSizes.Count == 0) references = [];
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
    /// <summary>Memory the decoded references take (RGB at their capped sizes), known from the headers before decoding.</summary>
    public long ReferenceBytes { get; }
    /// <summary>Whether the references' pixels are decoded (always true without references).</summary>
    public bool ReferencesDecoded => Volatile.Read(ref references) is not null;

    /// <summary>Each reference's size after the pixel cap (what decoding gives), from its header.</summary>
    internal IReadOnlyList<(int Width, int Height)> ReferenceSizes { get; }
    /// <summary>Pixel cap of each reference (one reference: the single cap, several: the multi cap).</summary>
    internal long ReferenceCap { get; }
    /// <summary>The references decoded and capped; null until <see cref="GenerationPipeline.DecodeReferences"/> ran.</summary>
    internal IReadOnlyList<RgbImage>? References => Volatile.Read(ref references);
    internal double DecodeMilliseconds { get; private set; }

    internal void SetReferences(IReadOnlyList<RgbImage> decoded, double milliseconds)
    {
        DecodeMilliseconds = milliseconds;
        Volatile.Write(ref references, decoded);
    }
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
