using System.Text.Json.Serialization;

namespace InferenceServer.LoadGen;

/// <summary>Latency summary in milliseconds.</summary>
public sealed record Percentiles(
    [property: JsonPropertyName("mean")] double Mean,
    [property: JsonPropertyName("p50")] double P50,
    [property: JsonPropertyName("p95")] double P95,
    [property: JsonPropertyName("p99")] double P99,
    [property: JsonPropertyName("min")] double Min,
    [property: JsonPropertyName("max")] double Max)
{
    /// <summary>Nearest-rank percentiles; all zero for an empty list.</summary>
    public static Percentiles Of(IReadOnlyCollection<double> values)
    {
        if (values.Count == 0) return new(0, 0, 0, 0, 0, 0);
        var s = values.Order().ToArray();
        double Rank(double p) => s[Math.Clamp((int)Math.Ceiling(p / 100 * s.Length) - 1, 0, s.Length - 1)];
        return new(s.Average(), Rank(50), Rank(95), Rank(99), s[0], s[^1]);
    }
}

/// <summary>One run's figures, as written to the JSON file (one object per run; a sweep writes an array).</summary>
public sealed record RunResult
{
    [JsonPropertyName("label")] public string Label { get; init; } = "";
    /// <summary>closed (fixed concurrency), open (Poisson arrivals), in-process (the pipeline called directly, no server).</summary>
    [JsonPropertyName("mode")] public string Mode { get; init; } = "";
    [JsonPropertyName("target")] public string Target { get; init; } = "";
    [JsonPropertyName("concurrency")] public int? Concurrency { get; init; }
    [JsonPropertyName("rate_rps")] public double? Rate { get; init; }
    [JsonPropertyName("sizes")] public string Sizes { get; init; } = "";
    [JsonPropertyName("steps")] public int Steps { get; init; }
    [JsonPropertyName("images_per_request")] public int ImagesPerRequest { get; init; }
    [JsonPropertyName("duration_s")] public double DurationSeconds { get; init; }
    [JsonPropertyName("sent")] public int Sent { get; init; }
    [JsonPropertyName("ok")] public int Ok { get; init; }
    [JsonPropertyName("errors")] public Dictionary<string, int> Errors { get; init; } = [];
    [JsonPropertyName("throughput_rps")] public double Throughput { get; init; }
    [JsonPropertyName("images_per_s")] public double ImagesPerSecond { get; init; }
    /// <summary>Client-side latency of successful requests (open loop: from the scheduled arrival, so queueing in the client counts).</summary>
    [JsonPropertyName("latency_ms")] public Percentiles Latency { get; init; } = Percentiles.Of([]);
    /// <summary>The server's own figures from the responses: time queued and admission-to-result.</summary>
    [JsonPropertyName("server_queue_ms")] public Percentiles ServerQueue { get; init; } = Percentiles.Of([]);
    [JsonPropertyName("server_total_ms")] public Percentiles ServerTotal { get; init; } = Percentiles.Of([]);
    [JsonPropertyName("mean_batch_size")] public double MeanBatchSize { get; init; }
    [JsonPropertyName("machine")] public string Machine { get; init; } = $"{Environment.ProcessorCount} cores, {Environment.OSVersion}";
}
