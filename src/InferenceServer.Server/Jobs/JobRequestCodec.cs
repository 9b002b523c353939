using System.Text.Json;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Lora;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// A durable job's generation request as stored: what either front end mapped into an <see cref="ImageJobRequest"/>,
/// minus what belongs to one call (request id, deadline, previews), as JSON (references base64). The seed is pinned at
/// submission, so every attempt, on any replica, makes the same images.
/// </summary>
public static class JobRequestCodec
{
    sealed record StoredLora(string Name, double Scale);

    sealed record Stored(string? Model, string Prompt, List<byte[]> References, string? Size, string? AspectRatio, string? Resolution,
        int Count, long Seed, int? Steps, double? Guidance, ImageFormat Format, int? Quality, List<StoredLora> Loras);

    static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public static byte[] Encode(ImageJobRequest r, long seed)
    {
        var g = r.Generation;
        return JsonSerializer.SerializeToUtf8Bytes(new Stored(r.Model, g.Prompt, [.. g.References], g.Size.Size, g.Size.AspectRatio, g.Size.Resolution,
            g.Count, seed, g.Steps, g.Guidance, g.Format, g.Quality, r.Loras.Select(l => new StoredLora(l.Name, l.Scale)).ToList()), Json);
    }

    /// <summary>The request a replica runs for job <paramref name="jobId"/> (its id is the request id in logs).</summary>
    public static ImageJobRequest Decode(byte[] stored, string jobId, TimeSpan timeout)
    {
        var s = JsonSerializer.Deserialize<Stored>(stored, Json) ?? throw new InvalidDataException($"job {jobId}: the stored request is empty");
        return new ImageJobRequest
        {
            Model = s.Model,
            RequestId = jobId,
            Timeout = timeout,
            Origin = "job",
            Durable = true,
            Loras = s.Loras.Select(l => new RequestedLora(l.Name, l.Scale)).ToList(),
            Generation = new GenerationRequest
            {
                Prompt = s.Prompt, References = s.References, Size = new SizeRequest(s.Size, s.AspectRatio, s.Resolution), Count = s.Count,
                Seed = s.Seed, Steps = s.Steps, Guidance = s.Guidance, Format = s.Format, Quality = s.Quality,
            },
        };
    }
}
