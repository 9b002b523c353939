using System.Text.Json;
using System.Text.Json.Nodes;
using InferenceServer.Models.Weights;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// Every hyper-parameter of the Z-Image diffusion transformer (official <c>ZImageTransformer2DModel</c> arguments plus
/// the constants the official code keeps inline: adaLN width, timestep-embedder width, pad multiple, final LayerNorm eps).
/// Built from a preset (<see cref="Turbo"/>), the released <c>transformer/config.json</c> (<see cref="FromDiffusersConfig"/>)
/// or the tensor shapes of a checkpoint (<see cref="FromTensors(ITensorSource)"/>, for folders without a config).
/// </summary>
public sealed record ZImageConfig
{
    /// <summary>Latent channels (16, the FLUX.1 VAE).</summary>
    public int InChannels { get; init; } = 16;
    /// <summary>Spatial patch size; only 2 exists (the checkpoint key <c>all_x_embedder.2-1</c>).</summary>
    public int PatchSize { get; init; } = 2;
    /// <summary>Temporal (frame) patch size; only 1 exists.</summary>
    public int FPatchSize { get; init; } = 1;
    public required int Dim { get; init; }
    /// <summary>Main (modulated) blocks over the unified [image, caption] sequence.</summary>
    public required int NLayers { get; init; }
    /// <summary>Blocks of each refiner: as many noise (image, modulated) as context (caption, unmodulated) refiners.</summary>
    public required int NRefinerLayers { get; init; }
    public required int NHeads { get; init; }
    /// <summary>Must equal <see cref="NHeads"/> (the release has no GQA); unset (0) reads as <see cref="NHeads"/>.</summary>
    public int NKvHeads { get => nKvHeads == 0 ? NHeads : nKvHeads; init => nKvHeads = value; }
    readonly int nKvHeads;
    /// <summary>Every RMSNorm's eps (sandwich norms, QK norms, caption RMSNorm).</summary>
    public double NormEps { get; init; } = 1e-5;
    /// <summary>Only true is supported (the release has <c>norm_q</c>/<c>norm_k</c>).</summary>
    public bool QkNorm { get; init; } = true;
    /// <summary>Text feature width (Qwen3-4B hidden size 2560).</summary>
    public required int CapFeatDim { get; init; }
    public double RopeTheta { get; init; } = 256.0;
    /// <summary>The model multiplies its time (0 = noise, 1 = clean) by this before the sinusoidal embedding.</summary>
    public double TScale { get; init; } = 1000.0;
    /// <summary>RoPE dims per position axis (t, h, w); sums to <see cref="HeadDim"/>.</summary>
    public required int[] AxesDims { get; init; }
    /// <summary>Largest position + 1 per axis (the official precomputed table's size): positions beyond are refused.</summary>
    public int[] AxesLens { get; init; } = [1536, 512, 512];
    /// <summary>adaLN conditioning width = <c>min(dim, ADALN_EMBED_DIM=256)</c> in the release; the tiny fixtures use 32/48.</summary>
    public required int AdalnDim { get; init; }
    /// <summary>Hidden width of <c>t_embedder.mlp</c> (1024).</summary>
    public int TEmbedderHidden { get; init; } = 1024;
    /// <summary>Sinusoidal timestep embedding width (256).</summary>
    public int FrequencyEmbeddingSize { get; init; } = 256;
    public double MaxPeriod { get; init; } = 10000;
    /// <summary>Each stream (image tokens, caption rows) is padded to a multiple of this with learned pad tokens.</summary>
    public int SeqMultiOf { get; init; } = 32;
    /// <summary>eps of the final layer's LayerNorm (no affine).</summary>
    public double FinalLayerNormEps { get; init; } = 1e-6;

    public int HeadDim => Dim / NHeads;
    /// <summary>Python's <c>int(dim / 3 * 8)</c> (10240 for 3840; 170 for 64).</summary>
    public int FfnHidden => (int)(Dim / 3.0 * 8);
    /// <summary>Features of one patchified token: <c>patch^2 * f_patch * in_channels</c> (64).</summary>
    public int PatchDim => PatchSize * PatchSize * FPatchSize * InChannels;

    /// <summary>The official ADALN_EMBED_DIM constant: adaLN width = min(dim, 256).</summary>
    public const int AdalnEmbedDim = 256;

    /// <summary>Tongyi-MAI/Z-Image-Turbo (6.15 B parameters): the released transformer/config.json plus the code constants.</summary>
    public static ZImageConfig Turbo { get; } = new ZImageConfig
    {
        Dim = 3840, NLayers = 30, NRefinerLayers = 2, NHeads = 30, NKvHeads = 30, CapFeatDim = 2560,
        AxesDims = [32, 48, 48], AxesLens = [1536, 512, 512], AdalnDim = 256,
    }.Validated();

    /// <summary>
    /// Reads the released diffusers <c>transformer/config.json</c> (keys all_patch_size, all_f_patch_size, in_channels, dim,
    /// n_layers, n_refiner_layers, n_heads, n_kv_heads, norm_eps, qk_norm, cap_feat_dim, rope_theta, t_scale, axes_dims,
    /// axes_lens; <c>_*</c> keys and keys set to null are ignored, anything else is refused so a variant we do not implement
    /// (e.g. Omni's siglip_feat_dim) fails loudly). adaln_dim = min(dim, 256) as in the official code.
    /// </summary>
    public static ZImageConfig FromDiffusersConfig(string configJsonPath)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(configJsonPath));
        try { return FromDiffusersConfig(doc.RootElement); }
        catch (ArgumentException e) { throw new ArgumentException($"{configJsonPath}: {e.Message}", e); }
    }

    /// <inheritdoc cref="FromDiffusersConfig(string)"/>
    public static ZImageConfig FromDiffusersConfig(JsonElement json)
    {
        static ArgumentException Bad(string m) => new($"invalid Z-Image transformer config: {m}");
        if (json.ValueKind != JsonValueKind.Object) throw Bad("not a JSON object");
        var known = new HashSet<string> { "all_patch_size", "all_f_patch_size", "in_channels", "dim", "n_layers", "n_refiner_layers", "n_heads",
            "n_kv_heads", "norm_eps", "qk_norm", "cap_feat_dim", "rope_theta", "t_scale", "axes_dims", "axes_lens" };
        foreach (var p in json.EnumerateObject())
            if (!known.Contains(p.Name) && !p.Name.StartsWith('_') && p.Value.ValueKind != JsonValueKind.Null)
                throw Bad($"unsupported key '{p.Name}' = {p.Value.GetRawText()}");
        JsonElement Get(string k) => json.TryGetProperty(k, out var v) && v.ValueKind != JsonValueKind.Null ? v : throw Bad($"missing key '{k}'");
        int Int(string k) => Get(k).TryGetInt32(out int v) ? v : throw Bad($"'{k}' must be an integer, got {Get(k).GetRawText()}");
        double Dbl(string k, double d) => json.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : d;
        int[] Ints(string k) => Get(k).ValueKind == JsonValueKind.Array ? Get(k).EnumerateArray().Select(e => e.GetInt32()).ToArray() : throw Bad($"'{k}' must be a list");
        int[] patch = Ints("all_patch_size"), fpatch = Ints("all_f_patch_size");
        if (patch is not [2] || fpatch is not [1])
            throw Bad($"all_patch_size [{string.Join(", ", patch)}] / all_f_patch_size [{string.Join(", ", fpatch)}]: only [2] / [1] (the released 2-1 embedder) is supported");
        int dim = Int("dim");
        return new ZImageConfig
        {
            InChannels = Int("in_channels"), Dim = dim, NLayers = Int("n_layers"), NRefinerLayers = Int("n_refiner_layers"),
            NHeads = Int("n_heads"), NKvHeads = json.TryGetProperty("n_kv_heads", out var kv) && kv.ValueKind == JsonValueKind.Number ? kv.GetInt32() : Int("n_heads"),
            NormEps = Dbl("norm_eps", 1e-5), QkNorm = !json.TryGetProperty("qk_norm", out var qk) || qk.ValueKind != JsonValueKind.False,
            CapFeatDim = Int("cap_feat_dim"), RopeTheta = Dbl("rope_theta", 256.0), TScale = Dbl("t_scale", 1000.0),
            AxesDims = Ints("axes_dims"), AxesLens = json.TryGetProperty("axes_lens", out var al) && al.ValueKind == JsonValueKind.Array ? Ints("axes_lens") : [1536, 512, 512],
            AdalnDim = Math.Min(dim, AdalnEmbedDim),
        }.Validated();
    }

    /// <summary>
    /// diffusers' <c>transformer/config.json</c> for this config (what <see cref="FromDiffusersConfig(string)"/> reads back; the
    /// released file has the same keys). Only configs with adaln_dim = min(dim, 256) can be expressed in it.
    /// </summary>
    public JsonObject ToDiffusersConfig()
    {
        if (AdalnDim != Math.Min(Dim, AdalnEmbedDim))
            throw new InvalidOperationException($"adaln_dim {AdalnDim} != min(dim, {AdalnEmbedDim}): not expressible in a diffusers config.json");
        return new JsonObject
        {
            ["_class_name"] = "ZImageTransformer2DModel",
            ["_diffusers_version"] = "0.36.0.dev0",
            ["all_f_patch_size"] = new JsonArray(FPatchSize),
            ["all_patch_size"] = new JsonArray(PatchSize),
            ["axes_dims"] = new JsonArray(AxesDims.Select(a => (JsonNode)a).ToArray()),
            ["axes_lens"] = new JsonArray(AxesLens.Select(a => (JsonNode)a).ToArray()),
            ["cap_feat_dim"] = CapFeatDim,
            ["dim"] = Dim,
            ["in_channels"] = InChannels,
            ["n_heads"] = NHeads,
            ["n_kv_heads"] = NKvHeads,
            ["n_layers"] = NLayers,
            ["n_refiner_layers"] = NRefinerLayers,
            ["norm_eps"] = NormEps,
            ["qk_norm"] = QkNorm,
            ["rope_theta"] = RopeTheta,
            ["t_scale"] = TScale,
        };
    }

    /// <summary>Infers the config from a checkpoint's tensor shapes (either layout, see <see cref="FromShapes"/>).</summary>
    public static ZImageConfig FromTensors(ITensorSource source) =>
        FromShapes(source.Entries.ToDictionary(e => e.Name, e => e.Shape, StringComparer.Ordinal));

    /// <summary>
    /// Infers the config from tensor names and shapes, diffusers or single-file names (prefix allowed): dim, patch features,
    /// layer counts, head_dim (norm_q width), cap_feat_dim, adaln_dim (<c>t_embedder.mlp.2.weight.shape[0]</c>), the
    /// t_embedder widths. Not in the shapes, so the release values are assumed: norm_eps 1e-5, rope_theta 256, t_scale 1000,
    /// axes_lens [1536, 512, 512] and axes_dims in the release's proportions (head_dim/4, 3*head_dim/8, 3*head_dim/8).
    /// </summary>
    public static ZImageConfig FromShapes(IReadOnlyDictionary<string, long[]> shapes)
    {
        var s = ZImageCheckpoint.ToDiffusersNames(shapes);
        long[] Shape(string k) => s.TryGetValue(k, out var v) ? v : throw new ArgumentException($"not a Z-Image transformer checkpoint: no tensor '{k}'");
        int Count(string prefix) => s.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal))
            .Select(k => int.TryParse(k[prefix.Length..].Split('.')[0], out int i) ? i + 1 : 0).DefaultIfEmpty(0).Max();
        var xe = Shape("all_x_embedder.2-1.weight");
        int dim = (int)xe[0], headDim = (int)Shape("layers.0.attention.norm_q.weight")[0];
        if (xe[1] % 4 != 0) throw new ArgumentException($"all_x_embedder.2-1.weight [{string.Join(", ", xe)}]: patch features must be 4 * in_channels");
        int nRefiner = Count("noise_refiner."), nContext = Count("context_refiner.");
        if (nRefiner != nContext) throw new ArgumentException($"{nRefiner} noise_refiner blocks but {nContext} context_refiner blocks (must be equal)");
        var c = new ZImageConfig
        {
            InChannels = (int)(xe[1] / 4), Dim = dim, NLayers = Count("layers."), NRefinerLayers = nRefiner,
            NHeads = headDim > 0 ? dim / headDim : 0, NKvHeads = headDim > 0 ? dim / headDim : 0,
            CapFeatDim = (int)Shape("cap_embedder.0.weight")[0],
            AxesDims = [headDim / 4, headDim * 3 / 8, headDim * 3 / 8],
            AdalnDim = (int)Shape("t_embedder.mlp.2.weight")[0],
            TEmbedderHidden = (int)Shape("t_embedder.mlp.0.weight")[0],
            FrequencyEmbeddingSize = (int)Shape("t_embedder.mlp.0.weight")[1],
        }.Validated();
        long ffn = Shape("layers.0.feed_forward.w1.weight")[0];
        if (ffn != c.FfnHidden) throw new ArgumentException($"layers.0.feed_forward.w1.weight has {ffn} rows, but int(dim / 3 * 8) = {c.FfnHidden}");
        return c;
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the offending value when the config is inconsistent.</summary>
    public ZImageConfig Validated()
    {
        static void Check(bool ok, string m) { if (!ok) throw new ArgumentException($"invalid Z-Image transformer config: {m}"); }
        Check(InChannels > 0, $"in_channels must be positive, got {InChannels}");
        Check(PatchSize == 2 && FPatchSize == 1, $"patch {PatchSize}/{FPatchSize}: only patch 2, f_patch 1 (the released '2-1' embedder) is supported");
        Check(Dim > 0 && NHeads > 0 && Dim % NHeads == 0, $"dim {Dim} must be a positive multiple of n_heads {NHeads}");
        Check(NKvHeads == NHeads, $"n_kv_heads {NKvHeads} != n_heads {NHeads}: grouped-query attention is not supported");
        Check(QkNorm, "qk_norm = false is not supported (the released model has QK RMSNorm)");
        Check(NLayers >= 0 && NRefinerLayers >= 0, $"n_layers {NLayers} and n_refiner_layers {NRefinerLayers} must be >= 0");
        Check(CapFeatDim > 0, $"cap_feat_dim must be positive, got {CapFeatDim}");
        Check(AdalnDim > 0 && TEmbedderHidden > 0, $"adaln_dim {AdalnDim} and t_embedder hidden {TEmbedderHidden} must be positive");
        Check(FrequencyEmbeddingSize > 0 && FrequencyEmbeddingSize % 2 == 0, $"frequency_embedding_size {FrequencyEmbeddingSize} must be a positive even number");
        Check(AxesDims is { Length: 3 } && AxesDims.All(a => a > 0 && a % 2 == 0), $"axes_dims [{string.Join(", ", AxesDims ?? [])}] must be 3 positive even numbers (t, h, w)");
        Check(AxesDims!.Sum() == HeadDim, $"axes_dims [{string.Join(", ", AxesDims!)}] sum to {AxesDims!.Sum()}, but head_dim = dim / n_heads = {HeadDim}");
        Check(AxesLens is { Length: 3 } && AxesLens.All(a => a > 0), $"axes_lens [{string.Join(", ", AxesLens ?? [])}] must be 3 positive numbers");
        Check(NormEps > 0 && FinalLayerNormEps > 0, $"norm_eps {NormEps} and the final LayerNorm eps {FinalLayerNormEps} must be positive");
        Check(RopeTheta > 0 && TScale > 0 && MaxPeriod > 0, $"rope_theta {RopeTheta}, t_scale {TScale}, max_period {MaxPeriod} must be positive");
        Check(SeqMultiOf > 0, $"seq_multi_of must be positive, got {SeqMultiOf}");
        return this;
    }

    /// <summary>Value equality including the arrays (records compare arrays by reference).</summary>
    public bool Equals(ZImageConfig? other) => other is not null && ToString() == other.ToString();

    public override int GetHashCode() => ToString().GetHashCode();

    public override string ToString() =>
        $"ZImageConfig {{ dim {Dim}, layers {NLayers}, refiners {NRefinerLayers}, heads {NHeads}/{NKvHeads}, head_dim {HeadDim}, in {InChannels}, patch {PatchSize}-{FPatchSize}, " +
        $"cap {CapFeatDim}, adaln {AdalnDim}, t_hidden {TEmbedderHidden}, freq {FrequencyEmbeddingSize}, ffn {FfnHidden}, norm_eps {NormEps}, qk_norm {QkNorm}, " +
        $"theta {RopeTheta}, t_scale {TScale}, axes_dims [{string.Join(", ", AxesDims ?? [])}], axes_lens [{string.Join(", ", AxesLens ?? [])}], " +
        $"max_period {MaxPeriod}, multiple {SeqMultiOf}, final_eps {FinalLayerNormEps} }}";
}
