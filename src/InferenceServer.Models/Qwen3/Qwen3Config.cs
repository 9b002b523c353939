using System.Text.Json;
using System.Text.Json.Serialization;

namespace InferenceServer.Models.Qwen3;

/// <summary>
/// Hyper-parameters of a Qwen3 decoder used as a text encoder. JSON names are those of a Hugging Face
/// <c>config.json</c> (so one loads as it is), plus the embedder's <c>output_layers</c> (indices into HF's
/// <c>hidden_states</c> tuple: 0 = embeddings, i = output of layer i-1, N = final norm) and <c>max_length</c>.
/// Component cards live in <c>models/text-encoders/*.json</c>.
/// </summary>
public sealed record Qwen3Config
{
    [JsonPropertyName("vocab_size")] public required int VocabSize { get; init; }
    [JsonPropertyName("hidden_size")] public required int HiddenSize { get; init; }
    [JsonPropertyName("intermediate_size")] public required int IntermediateSize { get; init; }
    [JsonPropertyName("num_hidden_layers")] public required int NumHiddenLayers { get; init; }
    [JsonPropertyName("num_attention_heads")] public required int NumAttentionHeads { get; init; }
    [JsonPropertyName("num_key_value_heads")] public required int NumKeyValueHeads { get; init; }
    [JsonPropertyName("head_dim")] public required int HeadDim { get; init; }
    [JsonPropertyName("rope_theta")] public required double RopeTheta { get; init; }
    [JsonPropertyName("rms_norm_eps")] public required double RmsNormEps { get; init; }
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; }

    /// <summary>HF <c>hidden_states</c> indices stacked into the output (klein: [9, 18, 27]).</summary>
    [JsonPropertyName("output_layers")] public int[] OutputLayers { get; init; } = [];

    /// <summary>Tokens per prompt after truncation/padding (klein: 512).</summary>
    [JsonPropertyName("max_length")] public int MaxLength { get; init; }

    /// <summary>Features per token of the stacked output: <c>output_layers.Length * hidden_size</c>.</summary>
    [JsonIgnore] public int OutputDim => OutputLayers.Length * HiddenSize;

    static readonly JsonSerializerOptions json = new() { ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };

    /// <summary>Parses a component card or an HF <c>config.json</c> (unknown fields are ignored) and validates it.</summary>
    public static Qwen3Config FromJson(string text, string source = "Qwen3 config")
    {
        Qwen3Config? c;
        try { c = JsonSerializer.Deserialize<Qwen3Config>(text, json); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: {e.Message}", e); }
        return (c ?? throw new InvalidDataException($"{source}: empty")).Validated(source);
    }

    /// <summary>Reads <see cref="FromJson"/> from a file.</summary>
    public static Qwen3Config Load(string path) => FromJson(File.ReadAllText(path), path);

    /// <summary>A card shipped in <c>models/text-encoders/</c> next to the binaries, e.g. <c>qwen3-4b</c>.</summary>
    public static Qwen3Config FromCard(string name) =>
        Load(Path.Combine(AppContext.BaseDirectory, "models", "text-encoders", name + ".json"));

    /// <summary>
    /// An HF <c>config.json</c> (e.g. a diffusers <c>text_encoder/config.json</c>) with the embedder settings of
    /// <paramref name="card"/> (output layers, max length), after checking that the architecture is the card's.
    /// </summary>
    public static Qwen3Config FromHfConfig(string configPath, Qwen3Config card)
    {
        var hf = Load(configPath) with { OutputLayers = card.OutputLayers, MaxLength = card.MaxLength };
        if (hf != card)
            throw new InvalidDataException($"{configPath}: architecture differs from the model card ({hf} vs {card})");
        return hf.Validated(configPath);
    }

    Qwen3Config Validated(string source)
    {
        void Check(bool ok, string what) { if (!ok) throw new InvalidDataException($"{source}: {what}"); }
        Check(VocabSize > 0 && HiddenSize > 0 && IntermediateSize > 0 && HeadDim > 0, "sizes must be positive");
        Check(NumHiddenLayers > 0, "num_hidden_layers must be positive");
        Check(NumAttentionHeads > 0 && NumKeyValueHeads > 0 && NumAttentionHeads % NumKeyValueHeads == 0,
            $"num_attention_heads {NumAttentionHeads} must be a multiple of num_key_value_heads {NumKeyValueHeads}");
        Check(HeadDim % 2 == 0, "head_dim must be even (rotary embedding)");
        Check(RopeTheta > 0 && RmsNormEps > 0, "rope_theta and rms_norm_eps must be positive");
        Check(OutputLayers.All(l => l >= 0 && l <= NumHiddenLayers),
            $"output_layers [{string.Join(", ", OutputLayers)}] must lie in 0..{NumHiddenLayers}");
        Check(MaxLength >= 0, "max_length must not be negative");
        return this;
    }

    /// <summary>Value equality including the output layer list.</summary>
    public bool Equals(Qwen3Config? other) =>
        other is not null && VocabSize == other.VocabSize && HiddenSize == other.HiddenSize && IntermediateSize == other.IntermediateSize
        && NumHiddenLayers == other.NumHiddenLayers && NumAttentionHeads == other.NumAttentionHeads && NumKeyValueHeads == other.NumKeyValueHeads
        && HeadDim == other.HeadDim && RopeTheta == other.RopeTheta && RmsNormEps == other.RmsNormEps
        && TieWordEmbeddings == other.TieWordEmbeddings && OutputLayers.SequenceEqual(other.OutputLayers) && MaxLength == other.MaxLength;

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(HiddenSize, NumHiddenLayers, NumAttentionHeads, HeadDim, MaxLength);

    /// <inheritdoc/>
    public override string ToString() =>
        $"Qwen3(hidden {HiddenSize}, {NumHiddenLayers} layers, {NumAttentionHeads}/{NumKeyValueHeads} heads x {HeadDim}, " +
        $"mlp {IntermediateSize}, vocab {VocabSize}, output layers [{string.Join(", ", OutputLayers)}], max length {MaxLength})";
}
