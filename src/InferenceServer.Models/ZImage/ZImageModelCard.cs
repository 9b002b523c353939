using System.Text.Json;

namespace InferenceServer.Models.ZImage;

/// <summary>A Z-Image model card (models/zimage-*.json): transformer config, sampling defaults and component cards.</summary>
/// <param name="Shift">The static schedule shift (Turbo 3, base 6).</param>
/// <param name="CfgNormalization">0: off; else the pred norm is capped at this multiple of the positive prediction's norm.</param>
/// <param name="CfgTruncation">No CFG on steps whose model time exceeds it (1: never truncated).</param>
public sealed record ZImageModelCard(string Name, ZImageConfig Transformer, SamplingDefaults Sampling, double Shift, double CfgNormalization,
    double CfgTruncation, string Vae, string TextEncoder)
{
    public const string Family = "zimage";

    /// <summary>Reads models/<paramref name="name"/>.json; throws <see cref="ArgumentException"/> naming the card on any defect.</summary>
    public static ZImageModelCard Load(string name)
    {
        using var doc = ModelCards.Read(name);
        var root = doc.RootElement;
        try
        {
            var s = root.GetProperty("sampling");
            double Opt(string k, double d) => s.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : d;
            return new ZImageModelCard(name, ZImageConfig.FromDiffusersConfig(root.GetProperty("transformer")),
                new SamplingDefaults(s.GetProperty("default_steps").GetInt32(), s.GetProperty("guidance").GetDouble(), s.GetProperty("distilled").GetBoolean()),
                Opt("shift", 3.0), Opt("cfg_normalization", 0), Opt("cfg_truncation", 1.0),
                root.GetProperty("vae").GetString()!, root.GetProperty("text_encoder").GetString()!);
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException or ArgumentException)
        {
            throw new ArgumentException($"model card {name}: {e.Message}", nameof(name), e);
        }
    }
}
