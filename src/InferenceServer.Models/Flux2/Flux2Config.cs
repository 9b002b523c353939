using System.Text.Json;
using System.Text.Json.Serialization;

namespace InferenceServer.Models.Flux2;

/// <summary>
/// Every hyper-parameter of the FLUX.2 transformer (BFL <c>Flux2Params</c> plus the constants BFL keeps inline:
/// timestep embedding width, time factor, max period, norm eps). Read from a model card's <c>"transformer"</c>
/// section (snake_case keys as in BFL's code); unknown keys and inconsistent values are rejected.
/// </summary>
public sealed record Flux2Config
{
    /// <summary>Latent token channels (2x2-packed 32-channel VAE latents: 128).</summary>
    [JsonPropertyName("in_channels")] public required int InChannels { get; init; }
    /// <summary>Text feature size (three stacked text-encoder layers).</summary>
    [JsonPropertyName("context_in_dim")] public required int ContextInDim { get; init; }
    [JsonPropertyName("hidden_size")] public required int HiddenSize { get; init; }
    [JsonPropertyName("num_heads")] public required int NumHeads { get; init; }
    /// <summary>Double-stream blocks.</summary>
    [JsonPropertyName("depth")] public required int Depth { get; init; }
    [JsonPropertyName("depth_single_blocks")] public required int DepthSingleBlocks { get; init; }
    /// <summary>RoPE dimensions per position axis (t, h, w, l); sums to the head dimension.</summary>
    [JsonPropertyName("axes_dim")] public required int[] AxesDim { get; init; }
    [JsonPropertyName("theta")] public required double Theta { get; init; }
    [JsonPropertyName("mlp_ratio")] public required double MlpRatio { get; init; }
    /// <summary>True for guidance-distilled dev-style models (<c>guidance_in</c> exists).</summary>
    [JsonPropertyName("use_guidance_embed")] public required bool UseGuidanceEmbed { get; init; }
    [JsonPropertyName("timestep_embed_dim")] public int TimestepEmbedDim { get; init; } = 256;
    [JsonPropertyName("time_factor")] public double TimeFactor { get; init; } = 1000.0;
    [JsonPropertyName("max_period")] public double MaxPeriod { get; init; } = 10000;
    [JsonPropertyName("layernorm_eps")] public double LayerNormEps { get; init; } = 1e-6;
    [JsonPropertyName("rmsnorm_eps")] public double RmsNormEps { get; init; } = 1e-6;
    /// <summary>FLUX.2 has no biases; only <c>false</c> is supported.</summary>
    [JsonPropertyName("linear_bias")] public bool LinearBias { get; init; }
    /// <summary>Optional, derived: must equal hidden_size / num_heads when given.</summary>
    [JsonPropertyName("head_dim")] public int? HeadDimDeclared { get; init; }
    /// <summary>Optional, derived: must equal int(hidden_size * mlp_ratio) when given.</summary>
    [JsonPropertyName("mlp_hidden_dim")] public int? MlpHiddenDimDeclared { get; init; }
    /// <summary>Where the numbers came from (model cards only; not used by the model).</summary>
    [JsonPropertyName("source")] public string? Source { get; init; }

    /// <summary>models/flux2-klein-4b.json</summary>
    public static Flux2Config Klein4B => ModelCards.Load("flux2-klein-4b").Transformer;
    /// <summary>models/flux2-klein-9b.json</summary>
    public static Flux2Config Klein9B => ModelCards.Load("flux2-klein-9b").Transformer;
    /// <summary>models/flux2-dev.json</summary>
    public static Flux2Config Dev => ModelCards.Load("flux2-dev").Transformer;
    /// <summary>models/flux2-tiny.json: the real structure at toy width, for end-to-end CPU tests.</summary>
    public static Flux2Config Tiny => ModelCards.Load("flux2-tiny").Transformer;

    [JsonIgnore] public int HeadDim => HiddenSize / NumHeads;
    [JsonIgnore] public int MlpHiddenDim => (int)(HiddenSize * MlpRatio);

    static readonly JsonSerializerOptions Options = new()
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        NumberHandling = JsonNumberHandling.Strict,
    };

    /// <summary>Parses and validates a config object (a model card's "transformer" section or a fixture's "config").</summary>
    public static Flux2Config FromJson(JsonElement json)
    {
        Flux2Config? c;
        try { c = json.Deserialize<Flux2Config>(Options); }
        catch (JsonException e) { throw new ArgumentException($"invalid FLUX.2 transformer config: {e.Message}", nameof(json), e); }
        return (c ?? throw new ArgumentException("FLUX.2 transformer config is null", nameof(json))).Validated();
    }

    /// <inheritdoc cref="FromJson(JsonElement)"/>
    public static Flux2Config FromJson(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return FromJson(doc.RootElement);
    }

    /// <summary>Serialises with the same keys <see cref="FromJson(JsonElement)"/> reads.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions(Options) { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull });

    /// <summary>Throws <see cref="ArgumentException"/> naming the offending key when values are inconsistent.</summary>
    public Flux2Config Validated()
    {
        static void Check(bool ok, string message) { if (!ok) throw new ArgumentException($"invalid FLUX.2 transformer config: {message}"); }
        Check(InChannels > 0, $"in_channels must be positive, got {InChannels}");
        Check(ContextInDim > 0, $"context_in_dim must be positive, got {ContextInDim}");
        Check(HiddenSize > 0 && NumHeads > 0 && HiddenSize % NumHeads == 0, $"hidden_size {HiddenSize} must be a positive multiple of num_heads {NumHeads}");
        Check(Depth >= 0 && DepthSingleBlocks >= 0, $"depth {Depth} and depth_single_blocks {DepthSingleBlocks} must be >= 0");
        Check(AxesDim is { Length: > 0 } && AxesDim.All(a => a > 0 && a % 2 == 0), $"axes_dim [{string.Join(", ", AxesDim ?? [])}] must be positive even numbers");
        var axes = AxesDim!;
        Check(axes.Sum() == HeadDim, $"axes_dim [{string.Join(", ", axes)}] sums to {axes.Sum()}, but head_dim = hidden_size / num_heads = {HeadDim}");
        Check(Theta > 0 && MaxPeriod > 0 && TimeFactor > 0, $"theta {Theta}, max_period {MaxPeriod}, time_factor {TimeFactor} must be positive");
        Check(MlpRatio > 0 && MlpHiddenDim > 0, $"mlp_ratio {MlpRatio} must be positive");
        Check(TimestepEmbedDim > 0 && TimestepEmbedDim % 2 == 0, $"timestep_embed_dim {TimestepEmbedDim} must be a positive even number");
        Check(LayerNormEps > 0 && RmsNormEps > 0, $"layernorm_eps {LayerNormEps} and rmsnorm_eps {RmsNormEps} must be positive");
        Check(!LinearBias, "linear_bias = true is not supported (FLUX.2 linears have no bias)");
        Check(HeadDimDeclared is null || HeadDimDeclared == HeadDim, $"head_dim {HeadDimDeclared} != hidden_size / num_heads = {HeadDim}");
        Check(MlpHiddenDimDeclared is null || MlpHiddenDimDeclared == MlpHiddenDim, $"mlp_hidden_dim {MlpHiddenDimDeclared} != int(hidden_size * mlp_ratio) = {MlpHiddenDim}");
        return this;
    }
}
