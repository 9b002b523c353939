using System.Text.Json;
using InferenceServer.Models.Flux2;

namespace InferenceServer.Models;

/// <summary>Sampling defaults of a model card's <c>"sampling"</c> section.</summary>
/// <param name="DefaultSteps">Euler steps when the request does not say.</param>
/// <param name="Guidance">Guidance scale (embedded guidance, or the CFG scale when not distilled).</param>
/// <param name="Distilled">True: one model call per step (BFL <c>denoise</c>); false: the CFG loop (<c>denoise_cfg</c>).</param>
public sealed record SamplingDefaults(int DefaultSteps, double Guidance, bool Distilled);

/// <summary>A FLUX.2 model card (models/*.json): transformer config, sampling defaults and the component cards it uses.</summary>
/// <param name="Name">Card name (file name without .json).</param>
/// <param name="Transformer">The transformer's hyper-parameters.</param>
/// <param name="Sampling">Sampling defaults.</param>
/// <param name="Vae">Name of the VAE card (models/vae/NAME.json).</param>
/// <param name="TextEncoder">Name of the text-encoder card (models/text-encoders/NAME.json).</param>
/// <param name="BflFile">Official single-file checkpoint name, when there is one.</param>
public sealed record Flux2ModelCard(string Name, Flux2Config Transformer, SamplingDefaults Sampling, string Vae, string TextEncoder, string? BflFile);

/// <summary>Finds and reads the model cards shipped in <c>models/</c> (copied next to the binaries).</summary>
public static class ModelCards
{
    /// <summary>Environment variable naming another models folder.</summary>
    public const string EnvironmentVariable = "INFERENCE_MODELS";

    /// <summary>The models folder: $INFERENCE_MODELS, else models/ next to the binaries, else the nearest models/ above them.</summary>
    public static string Directory { get; } = FindDirectory();

    /// <summary>Names of every model card available (all families).</summary>
    public static IReadOnlyList<string> Names =>
        System.IO.Directory.EnumerateFiles(Directory, "*.json").Select(Path.GetFileNameWithoutExtension).OfType<string>().Order(StringComparer.Ordinal).ToList();

    /// <summary>Names of the cards whose <c>"family"</c> key is <paramref name="family"/>.</summary>
    public static IReadOnlyList<string> NamesOf(string family) => Names.Where(n => FamilyOf(n) == family).ToList();

    /// <summary>The <c>"family"</c> key of card <paramref name="name"/> (e.g. "flux2", "zimage").</summary>
    public static string FamilyOf(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(PathOf(name)));
        return doc.RootElement.TryGetProperty("family", out var f) && f.GetString() is { Length: > 0 } family
            ? family : throw new ArgumentException($"model card {PathOf(name)} has no \"family\" key", nameof(name));
    }

    /// <summary>The file a model folder carries to name its card (the random writers record it).</summary>
    public const string MarkerFile = "inference-server.json";

    /// <summary>
    /// The card named by <paramref name="dir"/>/inference-server.json's <c>"model_card"</c>, or null when the folder has none.
    /// A marker that is not such JSON, or names no card under <see cref="Directory"/>, is an <see cref="InvalidDataException"/> naming it.
    /// </summary>
    public static string? MarkedCard(string dir)
    {
        string marker = Path.GetFullPath(Path.Combine(dir, MarkerFile));
        if (!File.Exists(marker)) return null;
        string? name;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(marker));
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{marker}: expected a JSON object such as {{\"model_card\": \"flux2-klein-4b\"}}, found {doc.RootElement.ValueKind.ToString().ToLowerInvariant()}");
            if (!doc.RootElement.TryGetProperty("model_card", out var card)) return null;
            name = card.ValueKind == JsonValueKind.String ? card.GetString() : null;
            if (string.IsNullOrEmpty(name) || name.IndexOfAny(['/', '\\']) >= 0)
                throw new InvalidDataException($"{marker}: \"model_card\" must be a card name, found {card.GetRawText()}");
        }
        catch (JsonException e) { throw new InvalidDataException($"{marker}: not valid JSON ({e.Message})", e); }
        if (!File.Exists(Path.Combine(Directory, name + ".json")))
            throw new InvalidDataException($"{marker}: names model card '{name}', which is not in {Directory} (have: {string.Join(", ", Names)})");
        return name;
    }

    /// <summary>A text-encoder component card (models/text-encoders/NAME.json).</summary>
    public static Qwen3.Qwen3Config TextEncoder(string name) => Qwen3.Qwen3Config.Load(Path.Combine(Directory, "text-encoders", name + ".json"));

    /// <summary>The parsed JSON of card <paramref name="name"/> (caller disposes), for a family's own card reader.</summary>
    public static JsonDocument Read(string name) => JsonDocument.Parse(File.ReadAllText(PathOf(name)));

    static string PathOf(string name)
    {
        string path = Path.Combine(Directory, name + ".json");
        return File.Exists(path) ? path : throw new ArgumentException($"no model card '{name}' in {Directory} (have: {string.Join(", ", Names)})", nameof(name));
    }

    /// <summary>Reads models/<paramref name="name"/>.json; throws <see cref="ArgumentException"/> naming the card and key on any defect.</summary>
    public static Flux2ModelCard Load(string name)
    {
        string path = PathOf(name);
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var root = doc.RootElement;
        try
        {
            var s = root.GetProperty("sampling");
            return new Flux2ModelCard(name,
                Flux2Config.FromJson(root.GetProperty("transformer")),
                new SamplingDefaults(s.GetProperty("default_steps").GetInt32(), s.GetProperty("guidance").GetDouble(), s.GetProperty("distilled").GetBoolean()),
                root.GetProperty("vae").GetString()!, root.GetProperty("text_encoder").GetString()!,
                root.TryGetProperty("bfl_file", out var f) ? f.GetString() : null);
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException or ArgumentException)
        {
            throw new ArgumentException($"model card {path}: {e.Message}", nameof(name), e);
        }
    }

    static string FindDirectory()
    {
        string? env = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env)) return Path.GetFullPath(env);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "models");
            if (File.Exists(Path.Combine(candidate, "flux2-klein-4b.json"))) return candidate;
        }
        return Path.Combine(AppContext.BaseDirectory, "models");
    }
}
