using InferenceServer.Models.Qwen3;

namespace InferenceServer.Models.Text;

/// <summary>
/// How a model turns a prompt into Qwen3 text features: the chat template around the prompt, the token length
/// (right truncation and right padding), which of Hugging Face's <c>hidden_states</c> form the features and whether
/// the pad rows are dropped. One encoder and tokenizer serve every model; this record is what differs.
/// <see cref="Klein"/>: the template with an empty <c>&lt;think&gt;</c> block, the cards' <c>output_layers</c> stacked
/// (real [9, 18, 27]) over all 512 rows. <see cref="ZImage"/>: no <c>&lt;think&gt;</c> block, <c>hidden_states[-2]</c>
/// alone, and only the real-token rows (a variable-length <c>[L, hidden]</c> per prompt).
/// </summary>
public sealed record PromptFormat
{
    /// <summary>For messages.</summary>
    public required string Name { get; init; }

    /// <summary>Text before the prompt.</summary>
    public required string TemplatePrefix { get; init; }

    /// <summary>Text after the prompt.</summary>
    public required string TemplateSuffix { get; init; }

    /// <summary>Tokens per prompt after truncation / padding.</summary>
    public int MaxLength { get; init; } = 512;

    /// <summary>
    /// Indices into HF <c>hidden_states</c> (0 = embeddings, i = output of layer i-1, N = final norm) concatenated into
    /// the features; negative values count from the end as in Python (-2 = the raw output of layer N-2, i.e. the input
    /// of the last layer). Null: the Qwen3 config's (the card's) <c>output_layers</c>.
    /// </summary>
    public int[]? HiddenStates { get; init; }

    /// <summary>Keep only the rows whose attention mask is 1 (<c>embeds[i][mask[i]]</c>); false keeps all rows, pads included.</summary>
    public bool DropPadding { get; init; }

    /// <summary>FLUX.2 [klein]: chat template with thinking disabled (an empty think block), card layers, pads kept.</summary>
    public static PromptFormat Klein { get; } = new()
    {
        Name = "klein",
        TemplatePrefix = Qwen3Tokenizer.TemplatePrefix,
        TemplateSuffix = Qwen3Tokenizer.TemplateSuffix,
    };

    /// <summary>
    /// Z-Image(-Turbo): <c>apply_chat_template(enable_thinking=True)</c> renders NO think block; <c>hidden_states[-2]</c>
    /// (real Qwen3-4B: output of layer 34 of 36); pads dropped.
    /// </summary>
    public static PromptFormat ZImage { get; } = new()
    {
        Name = "z-image",
        TemplatePrefix = "<|im_start|>user\n",
        TemplateSuffix = "<|im_end|>\n<|im_start|>assistant\n",
        HiddenStates = [-2],
        DropPadding = true,
    };

    /// <summary>The rendered template around <paramref name="prompt"/>.</summary>
    public string Render(string prompt) => TemplatePrefix + prompt + TemplateSuffix;

    /// <summary><see cref="HiddenStates"/> as non-negative indices for a decoder of <paramref name="numHiddenLayers"/> layers (N + 1 states).</summary>
    public int[] OutputLayers(int numHiddenLayers)
    {
        if (HiddenStates is null) throw new InvalidOperationException($"prompt format '{Name}' takes its layers from the model card");
        return [.. HiddenStates.Select(i =>
        {
            int k = i < 0 ? numHiddenLayers + 1 + i : i;
            if (k < 0 || k > numHiddenLayers)
                throw new ArgumentOutOfRangeException(nameof(numHiddenLayers), $"hidden_states[{i}] does not exist for {numHiddenLayers} layers");
            return k;
        })];
    }

    /// <summary>
    /// <paramref name="architecture"/> set up for this format: its <c>output_layers</c> (unless the format defers to the
    /// card) and <c>max_length</c>, e.g. <c>PromptFormat.ZImage.Configure(Qwen3Config.FromCard("qwen3-4b"))</c> -> layers [35].
    /// </summary>
    public Qwen3Config Configure(Qwen3Config architecture) => architecture with
    {
        OutputLayers = HiddenStates is null ? architecture.OutputLayers : OutputLayers(architecture.NumHiddenLayers),
        MaxLength = MaxLength,
    };
}
