using System.Text.RegularExpressions;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Qwen3;

/// <summary>
/// The Qwen3 text encoder of FLUX.2 [klein] and Z-Image: a Qwen3 decoder run over the templated, padded prompt, returning the hidden
/// states of <see cref="Qwen3Config.OutputLayers"/> side by side (klein: [9, 18, 27]; Z-Image: the single layer
/// <see cref="Text.PromptFormat.ZImage"/> selects, with <see cref="EncodeCaptions"/> dropping the pad rows), <c>[B, L, layers * hidden]</c>
/// (<c>stack(dim=1)</c> then <c>b c l d -> b l (c d)</c>), for all L positions (pads included, not zeroed).
/// Only the layers up to the highest output layer are built and run. Parameter names are Hugging Face's
/// (<c>model.layers.N.self_attn.q_proj.weight</c>, ...); <c>lm_head</c> is never needed.
/// Attention is causal and key-padding masked: a pad query sees every real token of its row and no pad key.
/// Norms and softmax run in float32 whatever the weights' dtype (float32 or bfloat16).
/// </summary>
public sealed class Qwen3TextEncoder : nn.Module<Tensor, Tensor, Tensor>
{
    readonly Qwen3Model model;

    /// <summary>The configuration the module was built for.</summary>
    public Qwen3Config Config { get; }

    /// <summary>Decoder layers built (and run).</summary>
    public int Depth { get; }

    /// <summary>Element type of the weights and of the output.</summary>
    public ScalarType DType { get; }

    /// <param name="config">Architecture and output layers.</param>
    /// <param name="dtype">Weights' dtype: float32 or bfloat16.</param>
    /// <param name="device">Where the weights live.</param>
    /// <param name="allLayers">Build every layer and the final norm (to inspect all hidden states), not just those the output needs.</param>
    public Qwen3TextEncoder(Qwen3Config config, ScalarType dtype = ScalarType.Float32, Device? device = null, bool allLayers = false)
        : base(nameof(Qwen3TextEncoder))
    {
        if (config.OutputLayers.Length == 0) throw new ArgumentException("the config names no output layer", nameof(config));
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"unsupported weight dtype {dtype}", nameof(dtype));
        Config = config;
        DType = dtype;
        Depth = allLayers ? config.NumHiddenLayers : Math.Min(config.OutputLayers.Max(), config.NumHiddenLayers);
        bool withNorm = allLayers || config.OutputLayers.Contains(config.NumHiddenLayers);
        model = new Qwen3Model(config, Depth, withNorm, dtype, device);
        RegisterComponents();
    }

    /// <summary>
    /// Builds the encoder and loads it from a checkpoint (a file, a sharded <c>*.index.json</c> or a folder such as a
    /// diffusers <c>text_encoder/</c>), converting the stored dtype (e.g. BF16) to <paramref name="dtype"/>.
    /// Strict: every tensor the module needs must be there with its shape; layers past <see cref="Depth"/>,
    /// an unused final norm and <c>lm_head</c> are skipped, anything else unknown is an error.
    /// </summary>
    /// <param name="read">How the files are read (memory maps, dropped pages); default: copies.</param>
    public static Qwen3TextEncoder Load(string checkpoint, Qwen3Config config, ScalarType dtype = ScalarType.Float32, Device? device = null, bool allLayers = false,
        ReadOptions? read = null)
    {
        using var source = Checkpoint.Open(checkpoint, read);
        var encoder = new Qwen3TextEncoder(config, dtype, device, allLayers);
        try { encoder.LoadWeights(source); }
        catch { encoder.Dispose(); throw; }
        return encoder;
    }

    /// <summary>Copies the weights from <paramref name="source"/> (see <see cref="Load"/>).</summary>
    public LoadReport LoadWeights(ITensorSource source) => StateDict.Load(this, source, strict: true, keyMap: KeyMap);

    static readonly Regex layerKey = new(@"^model\.layers\.(\d+)\.", RegexOptions.CultureInvariant);

    /// <summary>Checkpoint key to module key: adds the <c>model.</c> prefix a bare <c>Qwen3Model</c> lacks; null for what is not needed.</summary>
    string? KeyMap(string key)
    {
        if (key.StartsWith("lm_head.", StringComparison.Ordinal)) return null;
        if (!key.StartsWith("model.", StringComparison.Ordinal)) key = "model." + key;
        var m = layerKey.Match(key);
        if (m.Success && int.Parse(m.Groups[1].ValueSpan, System.Globalization.CultureInfo.InvariantCulture) >= Depth) return null;
        if (key == "model.norm.weight" && model.Norm is null) return null;
        return key;
    }

    /// <summary>
    /// The stacked hidden states <c>[B, L, OutputLayers.Length * hidden]</c> in <see cref="DType"/>.
    /// </summary>
    /// <param name="inputIds">[B, L] token ids (int64).</param>
    /// <param name="attentionMask">[B, L]: 1 for real tokens, 0 for pads.</param>
    public override Tensor forward(Tensor inputIds, Tensor attentionMask) => Features(inputIds, attentionMask, Config.OutputLayers);

    /// <summary>The hidden states <paramref name="layers"/> side by side, <c>[B, L, layers * hidden]</c> (an encoder shared between models serves each its own layers).</summary>
    Tensor Features(Tensor inputIds, Tensor attentionMask, int[] layers)
    {
        if (layers.Any(i => i < 0 || i > Depth)) throw new ArgumentException($"hidden states [{string.Join(", ", layers)}] asked, {Depth} layers built", nameof(layers));
        using var scope = NewDisposeScope();
        var states = Run(inputIds, attentionMask, layers.ToHashSet());
        return cat([.. layers.Select(i => states[i])], -1).MoveToOuterDisposeScope(); // [B, L, c*C]
    }

    /// <summary>Encodes tokenized prompts (all of one length, see <see cref="Text.Qwen3Tokenizer.EncodePrompts"/>): [B, L, OutputDim].</summary>
    /// <param name="layers">Hidden-state indices to return; null: <see cref="Qwen3Config.OutputLayers"/>.</param>
    public Tensor Encode(IReadOnlyList<Text.TokenizedPrompt> prompts, int[]? layers = null)
    {
        if (prompts.Count == 0) throw new ArgumentException("the batch holds no prompt", nameof(prompts));
        int l = prompts[0].InputIds.Length;
        if (prompts.Any(p => p.InputIds.Length != l)) throw new ArgumentException("prompts of different lengths in one batch", nameof(prompts));
        using var scope = NewDisposeScope();
        var ids = tensor(prompts.SelectMany(p => p.InputIds).Select(i => (long)i).ToArray(), [prompts.Count, l]);     // [B, L]
        var mask = tensor(prompts.SelectMany(p => p.AttentionMask).Select(i => (long)i).ToArray(), [prompts.Count, l]); // [B, L]
        return Features(ids, mask, layers ?? Config.OutputLayers).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Caption features with the pad rows dropped (<see cref="Text.PromptFormat.DropPadding"/>, Z-Image): for each prompt
    /// the rows of <see cref="Encode"/> whose attention mask is 1 (<c>embeds[i][mask[i]]</c>), each <c>[L_i, OutputDim]</c>
    /// in <see cref="DType"/>. Build the encoder from <c>PromptFormat.ZImage.Configure(config)</c> for Z-Image's
    /// <c>hidden_states[-2]</c>. The prompts run as one padded batch; the caller disposes the results.
    /// </summary>
    public IReadOnlyList<Tensor> EncodeCaptions(IReadOnlyList<Text.TokenizedPrompt> prompts, int[]? layers = null)
    {
        using var scope = NewDisposeScope();
        var all = Encode(prompts, layers);                                   // [B, L, OutputDim]
        var rows = new Tensor[prompts.Count];
        for (int i = 0; i < prompts.Count; i++)
        {
            var mask = prompts[i].AttentionMask;
            var keep = tensor(Enumerable.Range(0, mask.Length).Where(j => mask[j] != 0).Select(j => (long)j).ToArray(), device: all.device);
            rows[i] = all[i].index_select(0, keep).MoveToOuterDisposeScope(); // [L_i, OutputDim]
        }
        return rows;
    }

    /// <summary>
    /// Hugging Face's <c>hidden_states</c> tuple as far as this module goes: [0] embeddings, [i] output of layer i-1,
    /// and [N] the final norm of the last layer when every layer is built. Each [B, L, hidden]; the caller disposes them.
    /// </summary>
    public IReadOnlyList<Tensor> HiddenStates(Tensor inputIds, Tensor attentionMask)
    {
        int last = Depth;
        using var scope = NewDisposeScope();
        var states = Run(inputIds, attentionMask, Enumerable.Range(0, last + 1).ToHashSet());
        return [.. Enumerable.Range(0, last + 1).Select(i => states[i].MoveToOuterDisposeScope())];
    }

    /// <summary>Runs the stack, keeping the hidden states whose indices are in <paramref name="keep"/> (in the current scope).</summary>
    Dictionary<int, Tensor> Run(Tensor inputIds, Tensor attentionMask, HashSet<int> keep)
    {
        if (inputIds.dim() != 2 || !attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"input_ids [{string.Join(", ", inputIds.shape)}] and attention_mask [{string.Join(", ", attentionMask.shape)}] must both be [B, L]");
        if (inputIds.shape[0] == 0) throw new ArgumentException("empty batch", nameof(inputIds));
        // Right padding: every row starts with a real token, so every query has a key to attend to.
        if (inputIds.shape[1] == 0 || attentionMask[.., 0].eq(0).any().item<bool>())
            throw new ArgumentException("every row must start with a real token (right padding; no empty row)", nameof(attentionMask));
        using var noGrad = no_grad();
        var device = model.Embed.parameters().First().device;
        long l = inputIds.shape[1];
        var ids = inputIds.to(ScalarType.Int64, device);

        // allowed[b, 0, q, k] = k <= q and mask[b, k] == 1
        var causal = ones(l, l, dtype: ScalarType.Bool, device: device).tril();       // [L, L]
        var keyValid = attentionMask.to(device).ne(0).view(-1, 1, 1, l);             // [B, 1, 1, L]
        var allowed = causal.view(1, 1, l, l).logical_and(keyValid);                  // [B, 1, L, L]
        var (cos, sin) = Qwen3Rope.Tables(l, Config.HeadDim, Config.RopeTheta, DType, device); // [L, D] each

        var kept = new Dictionary<int, Tensor>();
        var h = model.Embed.call(ids); // [B, L, C]
        if (keep.Contains(0)) kept[0] = h;
        for (int i = 0; i < Depth; i++)
        {
            var next = model.Layers[i].forward(h, cos, sin, allowed); // [B, L, C]
            if (!keep.Contains(i)) h.Dispose();
            h = next;
            // hidden_states[N] is the final norm of the last layer's output, not the raw output.
            if (i + 1 == Config.NumHiddenLayers) { var normed = model.Norm!.call(h); h.Dispose(); h = normed; }
            if (keep.Contains(i + 1)) kept[i + 1] = h;
        }
        return kept;
    }
}
