using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Weights;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// A diffusers <c>AutoencoderKL</c> <c>vae/config.json</c>, as Z-Image ships the FLUX.1 AE. JSON names are diffusers'
/// (so the file loads as it is; unknown keys are ignored); the defaults are the real FLUX.1 AE (<see cref="Flux1"/>).
/// The blocks are FLUX.2's (same maths: <see cref="ToBlocks"/>); GroupNorm eps is diffusers' fixed 1e-6.
/// </summary>
public sealed record ZImageVaeConfig
{
    [JsonPropertyName("in_channels")] public int InChannels { get; init; } = 3;
    [JsonPropertyName("out_channels")] public int OutChannels { get; init; } = 3;
    [JsonPropertyName("latent_channels")] public int LatentChannels { get; init; } = 16;
    [JsonPropertyName("block_out_channels")] public int[] BlockOutChannels { get; init; } = [128, 256, 512, 512];
    [JsonPropertyName("layers_per_block")] public int LayersPerBlock { get; init; } = 2;
    [JsonPropertyName("norm_num_groups")] public int NormNumGroups { get; init; } = 32;
    [JsonPropertyName("act_fn")] public string ActFn { get; init; } = "silu";
    [JsonPropertyName("down_block_types")] public string[]? DownBlockTypes { get; init; }
    [JsonPropertyName("up_block_types")] public string[]? UpBlockTypes { get; init; }

    /// <summary>DiT latents = (z - shift) * scaling: the decoder sees <c>latents / scaling + shift</c>.</summary>
    [JsonPropertyName("scaling_factor")] public double ScalingFactor { get; init; } = 0.3611;

    /// <summary>See <see cref="ScalingFactor"/>; null in a config (SD-style VAEs) means 0.</summary>
    [JsonPropertyName("shift_factor")] public double? ShiftFactor { get; init; } = 0.1159;

    [JsonPropertyName("use_quant_conv")] public bool UseQuantConv { get; init; }
    [JsonPropertyName("use_post_quant_conv")] public bool UsePostQuantConv { get; init; }
    [JsonPropertyName("mid_block_add_attention")] public bool MidBlockAddAttention { get; init; } = true;
    [JsonPropertyName("sample_size")] public int SampleSize { get; init; } = 1024;

    /// <summary>The FLUX.1 AE as Z-Image-Turbo's <c>vae/config.json</c> gives it.</summary>
    public static ZImageVaeConfig Flux1 { get; } = new();

    /// <summary>Pixels per latent pixel along a side: 2^(levels-1) (8).</summary>
    [JsonIgnore] public int DownFactor => 1 << (BlockOutChannels.Length - 1);

    /// <summary>The shift as a number (null = 0).</summary>
    [JsonIgnore] public double Shift => ShiftFactor ?? 0;

    static readonly JsonSerializerOptions json = new() { ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };

    /// <summary>Parses a diffusers config (unknown keys ignored) and validates it.</summary>
    public static ZImageVaeConfig FromJson(string text, string source = "vae config")
    {
        ZImageVaeConfig? c;
        try { c = JsonSerializer.Deserialize<ZImageVaeConfig>(text, json); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: {e.Message}", e); }
        return (c ?? throw new InvalidDataException($"{source}: empty")).Validated(source);
    }

    /// <summary>Reads <see cref="FromJson"/> from a file.</summary>
    public static ZImageVaeConfig Load(string path) => FromJson(File.ReadAllText(path), path);

    /// <summary>
    /// The architecture read off a checkpoint's tensor shapes (diffusers or BFL names), for a <c>vae/</c> folder without
    /// config.json or a single AE file. What shapes cannot tell (GroupNorm groups, scaling and shift) comes from
    /// <paramref name="defaults"/> (<see cref="Flux1"/>). Needs the encoder or the decoder complete.
    /// </summary>
    public static ZImageVaeConfig FromTensors(IEnumerable<TensorEntry> entries, ZImageVaeConfig? defaults = null)
    {
        var list = entries.ToList();
        var byName = new Dictionary<string, long[]>(StringComparer.Ordinal);
        bool diffusers = AutoEncoderKeyMap.IsDiffusersLayout(list.Select(e => e.Name));
        int bflLevels = 1 + list.Select(e => Regex.Match(e.Name, @"^(?:encoder\.down|decoder\.up)\.(\d+)\."))
            .Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value)).DefaultIfEmpty(0).Max();
        foreach (var e in list) byName[diffusers ? e.Name : AutoEncoderKeyMap.ToDiffusers(e.Name, bflLevels)] = e.Shape;

        long[]? Shape(string name) => byName.GetValueOrDefault(name);
        int Count(string prefix) => byName.Keys.Select(k => Regex.Match(k, "^" + Regex.Escape(prefix) + @"(\d+)\."))
            .Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value) + 1).DefaultIfEmpty(0).Max();

        var d = defaults ?? Flux1;
        int levels = Math.Max(Count("encoder.down_blocks."), Count("decoder.up_blocks."));
        if (levels == 0) throw new InvalidDataException("vae checkpoint: no encoder.down_blocks.* or decoder.up_blocks.* tensors (not an AutoencoderKL)");
        bool hasEncoder = Count("encoder.down_blocks.") == levels;
        var widths = new int[levels];
        for (int i = 0; i < levels; i++)
        {
            var w = hasEncoder ? Shape($"encoder.down_blocks.{i}.resnets.0.conv1.weight") : Shape($"decoder.up_blocks.{levels - 1 - i}.resnets.0.conv1.weight");
            widths[i] = (int)(w ?? throw new InvalidDataException($"vae checkpoint: level {i} has no first ResNet conv1 weight"))[0];
        }
        int layers = hasEncoder ? Count("encoder.down_blocks.0.resnets.") : Count("decoder.up_blocks.0.resnets.") - 1;
        var latent = Shape("decoder.conv_in.weight") is { } ci ? ci[1] : Shape("encoder.conv_out.weight") is { } co ? co[0] / 2 : 0;
        var c = d with
        {
            InChannels = Shape("encoder.conv_in.weight") is { } cin ? (int)cin[1] : d.InChannels,
            OutChannels = Shape("decoder.conv_out.weight") is { } o ? (int)o[0] : d.OutChannels,
            LatentChannels = (int)latent,
            BlockOutChannels = widths,
            LayersPerBlock = layers,
            DownBlockTypes = null,
            UpBlockTypes = null,
            UseQuantConv = byName.ContainsKey("quant_conv.weight"),
            UsePostQuantConv = byName.ContainsKey("post_quant_conv.weight"),
        };
        return c.Validated("vae checkpoint shapes");
    }

    /// <summary>The shared FLUX autoencoder blocks' config: <c>ch = block_out_channels[0]</c>, <c>ch_mult = block_out_channels / ch</c>.</summary>
    public AutoEncoderConfig ToBlocks() => new()
    {
        Resolution = SampleSize,
        InChannels = InChannels,
        OutCh = OutChannels,
        Ch = BlockOutChannels[0],
        ChMult = [.. BlockOutChannels.Select(b => b / BlockOutChannels[0])],
        NumResBlocks = LayersPerBlock,
        ZChannels = LatentChannels,
        GroupNormGroups = NormNumGroups,
        GroupNormEps = 1e-6,
        UseQuantConv = UseQuantConv,
        UsePostQuantConv = UsePostQuantConv,
    };

    /// <summary>This config as a diffusers <c>vae/config.json</c> (what a random-weight model folder writes).</summary>
    public JsonObject ToDiffusersJson() => new()
    {
        ["_class_name"] = "AutoencoderKL",
        ["_diffusers_version"] = "0.36.0.dev0",
        ["in_channels"] = InChannels,
        ["out_channels"] = OutChannels,
        ["latent_channels"] = LatentChannels,
        ["block_out_channels"] = new JsonArray([.. BlockOutChannels.Select(b => (JsonNode)b)]),
        ["layers_per_block"] = LayersPerBlock,
        ["norm_num_groups"] = NormNumGroups,
        ["act_fn"] = ActFn,
        ["down_block_types"] = new JsonArray([.. BlockOutChannels.Select(_ => (JsonNode)"DownEncoderBlock2D")]),
        ["up_block_types"] = new JsonArray([.. BlockOutChannels.Select(_ => (JsonNode)"UpDecoderBlock2D")]),
        ["scaling_factor"] = ScalingFactor,
        ["shift_factor"] = ShiftFactor,
        ["use_quant_conv"] = UseQuantConv,
        ["use_post_quant_conv"] = UsePostQuantConv,
        ["mid_block_add_attention"] = MidBlockAddAttention,
        ["force_upcast"] = true,
        ["sample_size"] = SampleSize,
    };

    ZImageVaeConfig Validated(string source)
    {
        void Check(bool ok, string what) { if (!ok) throw new InvalidDataException($"{source}: {what}"); }
        Check(InChannels > 0 && OutChannels > 0 && LatentChannels > 0 && LayersPerBlock > 0, "channel counts and layers_per_block must be positive");
        int[] widths = BlockOutChannels ?? [];
        Check(widths.Length > 0 && widths.All(b => b > 0 && b % widths[0] == 0),
            $"block_out_channels [{string.Join(", ", widths)}] must be positive multiples of the first");
        Check(NormNumGroups > 0 && widths.All(b => b % NormNumGroups == 0), $"every block_out_channels value must be divisible by norm_num_groups ({NormNumGroups})");
        Check(ActFn == "silu", $"act_fn '{ActFn}' is not supported (only silu)");
        Check(MidBlockAddAttention, "mid_block_add_attention false is not supported");
        Check(DownBlockTypes is null || (DownBlockTypes.Length == widths.Length && DownBlockTypes.All(t => t == "DownEncoderBlock2D")),
            "down_block_types must be one DownEncoderBlock2D per block_out_channels entry");
        Check(UpBlockTypes is null || (UpBlockTypes.Length == widths.Length && UpBlockTypes.All(t => t == "UpDecoderBlock2D")),
            "up_block_types must be one UpDecoderBlock2D per block_out_channels entry");
        Check(ScalingFactor > 0 && double.IsFinite(ScalingFactor) && double.IsFinite(Shift), "scaling_factor must be positive and shift_factor finite");
        return this;
    }
}
