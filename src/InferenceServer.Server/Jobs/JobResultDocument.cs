using System.Text.Json;

namespace InferenceServer.Server.Jobs;

/// <summary>One image of a result, without its bytes.</summary>
public sealed record JobImageInfo(int Index, string MimeType, int Width, int Height, long Seed, long Bytes);

/// <summary>
/// The result of a succeeded job as stored next to its images (JSON in the <c>result</c> column) and shown by both front
/// ends: the images' metadata, the model and sampling, and the timings of the run that produced it.
/// </summary>
public sealed record JobResultDocument(IReadOnlyList<JobImageInfo> Images, string Model, int Steps, int BatchSize, double TotalMs, double QueueMs,
    IReadOnlyDictionary<string, double> StagesMs)
{
    static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public byte[] ToBytes() => JsonSerializer.SerializeToUtf8Bytes(this, Json);

    public static JobResultDocument? Parse(byte[]? bytes) => bytes is { Length: > 0 } ? JsonSerializer.Deserialize<JobResultDocument>(bytes, Json) : null;

    /// <summary>What the engine returned, as the stored result with its images.</summary>
    public static JobResult FromEngine(Engine.JobResult r)
    {
        var g = r.Generation;
        var images = g.Images.Select((i, k) => new JobImage(k, i.Image.MimeType, i.Image.Bytes, i.Seed, i.Width, i.Height)).ToList();
        var document = new JobResultDocument(
            images.Select(i => new JobImageInfo(i.Index, i.MimeType, i.Width, i.Height, i.Seed, i.Bytes.Length)).ToList(), r.Model, g.Steps, r.BatchRequests,
            r.TotalMilliseconds, r.QueueMilliseconds, g.Timings.GroupBy(t => t.Name).ToDictionary(t => t.Key, t => t.Sum(x => x.Milliseconds)));
        return new JobResult(images, document.ToBytes());
    }
}
