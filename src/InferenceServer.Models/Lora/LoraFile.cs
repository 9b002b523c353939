using System.Text.Json;
using InferenceServer.Models.Weights;

namespace InferenceServer.Models.Lora;

/// <summary>The tensors of one adapter module in a file: its key (before the suffix), down (A) and up (B) names, optional alpha.</summary>
public sealed record LoraModuleEntry(string Key, string Down, string Up, string? Alpha);

/// <summary>
/// The key grammar of published LoRA files: <c>KEY.lora_A.weight</c> / <c>KEY.lora_B.weight</c> (PEFT, diffusers, ai-toolkit;
/// also <c>.lora_A.default.weight</c>), <c>KEY.lora_down.weight</c> / <c>KEY.lora_up.weight</c> + <c>KEY.alpha</c> (kohya,
/// musubi, ComfyUI; also <c>.lora.down.weight</c>). What KEY names is left to <see cref="LoraTargets"/>.
/// </summary>
public static class LoraFile
{
    enum Role { Down, Up, Alpha }

    static readonly (string Suffix, Role Role)[] Suffixes =
    [
        (".lora_A.default.weight", Role.Down), (".lora_B.default.weight", Role.Up),
        (".lora_A.weight", Role.Down), (".lora_B.weight", Role.Up),
        (".lora_down.weight", Role.Down), (".lora_up.weight", Role.Up),
        (".lora.down.weight", Role.Down), (".lora.up.weight", Role.Up),
        (".alpha", Role.Alpha),
    ];

    /// <summary>Groups the file's tensors by module; throws <see cref="InvalidDataException"/> naming the first key that is not part of a LoRA module.</summary>
    public static IReadOnlyList<LoraModuleEntry> Modules(SafetensorsFile file)
    {
        var parts = new Dictionary<string, (string? Down, string? Up, string? Alpha)>(StringComparer.Ordinal);
        var order = new List<string>();
        foreach (var e in file.Entries)
        {
            var match = Suffixes.FirstOrDefault(s => e.Name.EndsWith(s.Suffix, StringComparison.Ordinal));
            if (match.Suffix is null)
            {
                string why = e.Name.EndsWith(".dora_scale", StringComparison.Ordinal) ? "DoRA adapters are not supported"
                    : e.Name.EndsWith(".diff", StringComparison.Ordinal) || e.Name.EndsWith(".diff_b", StringComparison.Ordinal) ? "full-weight differences (LyCORIS diff) are not supported"
                    : e.Name.Contains("hada_", StringComparison.Ordinal) || e.Name.Contains("lokr_", StringComparison.Ordinal) ? "LoHa/LoKr adapters are not supported"
                    : "not a LoRA tensor (expected .lora_A/.lora_B, .lora_down/.lora_up weights or .alpha)";
                throw new InvalidDataException($"key '{e.Name}': {why}");
            }
            string key = e.Name[..^match.Suffix.Length];
            if (!parts.TryGetValue(key, out var p)) { order.Add(key); p = default; }
            p = match.Role switch
            {
                Role.Down => p with { Down = e.Name },
                Role.Up => p with { Up = e.Name },
                _ => p with { Alpha = e.Name },
            };
            parts[key] = p;
        }
        if (order.Count == 0) throw new InvalidDataException("the file holds no tensors");
        return order.Select(k =>
        {
            var (down, up, alpha) = parts[k];
            if (down is null || up is null)
                throw new InvalidDataException($"key '{(down ?? up ?? alpha)}': module '{k}' has no {(down is null ? "down (lora_A / lora_down)" : "up (lora_B / lora_up)")} weight");
            return new LoraModuleEntry(k, down, up, alpha);
        }).ToList();
    }

    /// <summary>What a file's keys say it is: "diffusers", "peft", "kohya", "comfyui" or "bfl" (ai-toolkit and BFL-named files).</summary>
    public static string FormatOf(IReadOnlyList<LoraModuleEntry> modules)
    {
        var m = modules[0];
        bool kohyaSuffix = m.Down.EndsWith(".lora_down.weight", StringComparison.Ordinal) || m.Down.EndsWith(".lora.down.weight", StringComparison.Ordinal);
        if (m.Key.StartsWith("transformer.", StringComparison.Ordinal)) return "diffusers";
        if (m.Key.StartsWith("base_model.model.", StringComparison.Ordinal)) return "peft";
        if (m.Key.StartsWith("lora_unet_", StringComparison.Ordinal)) return "kohya";
        return kohyaSuffix ? "comfyui" : "bfl";
    }

    /// <summary>
    /// PEFT's <c>lora_alpha / r</c> for a module from the header metadata <c>lora_adapter_metadata</c> (diffusers writes its
    /// LoraConfig there, keys prefixed <c>transformer.</c>), with <c>alpha_pattern</c> overrides; null when absent.
    /// </summary>
    public static double? PeftAlpha(IReadOnlyDictionary<string, string> metadata, string moduleKey)
    {
        if (!metadata.TryGetValue("lora_adapter_metadata", out var json)) return null;
        JsonElement root;
        try { root = JsonDocument.Parse(json).RootElement; }
        catch (JsonException e) { throw new InvalidDataException($"metadata 'lora_adapter_metadata' is not JSON: {e.Message}"); }
        if (root.ValueKind != JsonValueKind.Object) return null;
        JsonElement Get(string name) =>
            root.TryGetProperty("transformer." + name, out var v) || root.TryGetProperty(name, out v) ? v : default;
        string module = moduleKey.StartsWith("transformer.", StringComparison.Ordinal) ? moduleKey["transformer.".Length..] : moduleKey;
        if (Get("alpha_pattern") is { ValueKind: JsonValueKind.Object } pattern)
            foreach (var p in pattern.EnumerateObject())
                if ((module == p.Name || module.EndsWith("." + p.Name, StringComparison.Ordinal)) && p.Value.TryGetDouble(out double a)) return a;
        return Get("lora_alpha") is { ValueKind: JsonValueKind.Number } alpha ? alpha.GetDouble() : null;
    }
}
