using InferenceServer.Pipeline.Images;

namespace InferenceServer.Pipeline.Generation;

// TEMPORARY (replaced by the batched pipeline on branch `batch`): the batch API the server codes against, run one
// request at a time through Generate.

public readonly record struct BatchKey(int Width, int Height, int Steps, double? Guidance, string References);

public sealed class PreparedRequest
{
    internal PreparedRequest(GenerationRequest request, int width, int height, int steps, double? guidance, long seed, BatchKey key)
    {
        Request = request; Width = width; Height = height; Steps = steps; Guidance = guidance; Seed = seed; Key = key;
    }
    public GenerationRequest Request { get; }
    public int Width { get; }
    public int Height { get; }
    public int Steps { get; }
    public double? Guidance { get; }
    public long Seed { get; }
    public int Count => Request.Count;
    public BatchKey Key { get; }
}

public sealed record BatchEntry(PreparedRequest Request, CancellationToken CancellationToken, int PreviewEvery = 0);
public sealed record BatchProgress(int Entry, int Step, int Steps, EncodedImage? Preview);
public sealed record BatchOutcome(GenerationResult? Result, Exception? Error);

public static class BatchShim
{
    public static PreparedRequest Prepare(this GenerationPipeline pipeline, GenerationRequest request)
    {
        var card = pipeline.Model.Card;
        if (string.IsNullOrWhiteSpace(request.Prompt)) throw new ArgumentException("prompt: must not be empty");
        if (request.References.Count > pipeline.Options.MaxReferences)
            throw new ArgumentException($"image: {request.References.Count} reference images given, at most {pipeline.Options.MaxReferences} are allowed");
        if (request.Count is < 1 or > 16) throw new ArgumentException($"n: {request.Count} images requested, 1 to 16 are allowed");
        int steps = request.Steps ?? card.Sampling.DefaultSteps;
        if (steps is < 1 or > 200) throw new ArgumentException($"steps: {steps}, 1 to 200 are allowed");
        var codec = new ImageCodec(pipeline.Options.Decode);
        var first = request.References.Count > 0 ? codec.Decode(request.References[0]) : null;
        var (w, h) = request.Size.Resolve(pipeline.Options.Sizes, first is null ? null : (first.Width, first.Height));
        long seed = request.Seed ?? Random.Shared.NextInt64(0, 1L << 53);
        return new PreparedRequest(request with { Seed = seed }, w, h, steps, request.Guidance, seed,
            new BatchKey(w, h, steps, request.Guidance, request.References.Count == 0 ? "" : Guid.NewGuid().ToString()));
    }

    public static IReadOnlyList<BatchOutcome> GenerateBatch(this GenerationPipeline pipeline, IReadOnlyList<BatchEntry> entries, Action<BatchProgress>? onStep = null)
    {
        var outcomes = new List<BatchOutcome>();
        for (int e = 0; e < entries.Count; e++)
        {
            int entry = e;
            var p = entries[e].Request;
            try
            {
                var r = pipeline.Generate(p.Request, s => onStep?.Invoke(new BatchProgress(entry, s.Step + 1, s.Steps, null)), entries[e].CancellationToken);
                outcomes.Add(new BatchOutcome(r, null));
            }
            catch (Exception ex) { outcomes.Add(new BatchOutcome(null, ex)); }
        }
        return outcomes;
    }
}
