using System.Text.Json.Serialization;

namespace InferenceServer.Reliability;

/// <summary>Latency summary in milliseconds (nearest rank).</summary>
public sealed record Percentiles(
    [property: JsonPropertyName("count")] int Count,
    [property: JsonPropertyName("p50")] double P50,
    [property: JsonPropertyName("p99")] double P99,
    [property: JsonPropertyName("max")] double Max)
{
    public static Percentiles Of(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        if (s.Length == 0) return new(0, 0, 0, 0);
        double Rank(double p) => s[Math.Clamp((int)Math.Ceiling(p / 100 * s.Length) - 1, 0, s.Length - 1)];
        return new(s.Length, Math.Round(Rank(50), 1), Math.Round(Rank(99), 1), Math.Round(s[^1], 1));
    }

    public override string ToString() => Count == 0 ? "-" : $"{P50:F1} / {P99:F1}";
}
