using System.Text.Json;
using System.Text.Json.Nodes;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;
using InferenceServer.Models.Files;

namespace InferenceServer.Models.Flux2;

/// <summary>
/// Writes a complete random-weight model folder of a card (see <see cref="Flux2ModelFolder"/> for the layouts), streaming
/// tensor by tensor: the transformer through <see cref="Flux2RandomCheckpoint"/>, the VAE and the Qwen3 text encoder
/// with official names, shapes and the requested dtype, the tokenizer copied from models/qwen3-tokenizer, and
/// <see cref="Flux2ModelFolder.MarkerFile"/> naming the card. Every tensor comes from its own generator seeded by (seed, key).
/// </summary>
public static class Flux2RandomModel
{
    /// <summary>Text-encoder shard size (bytes of tensor data); below it the encoder is one <c>model.safetensors</c>.</summary>
    public const long TextEncoderShardBytes = 4L << 30;

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Every component's progress: (component, bytes written so far, total bytes of that component).</summary>
    /// <param name="transformerQuantization">Fp8 or Int8: the transformer is written quantized (BFL layout only; the random
    /// BF16 weights quantized tensor by tensor, FP8 in the official scaled-FP8 layout) as <c>flux-2-NAME-fp8.safetensors</c> / <c>-int8</c>.</param>
    public static void Write(Flux2ModelCard card, Flux2Layout layout, string outDir, ScalarType dtype, long seed,
        Action<string, long, long>? progress = null, WeightQuantization transformerQuantization = WeightQuantization.None)
    {
        Directory.CreateDirectory(outDir);
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["generator"] = $"inference-server random-checkpoint seed={seed}" };

        // transformer
        string bflFile = card.BflFile ?? Flux2Checkpoint.BflFileName(card.Name.Replace("flux2-", ""));
        if (transformerQuantization != WeightQuantization.None)
        {
            if (layout != Flux2Layout.Bfl) throw new ArgumentException("an 8-bit random transformer is written in the BFL layout only", nameof(layout));
            using var random = new RandomTransformerSource(card.Transformer, seed, dtype);
            long qTotal = Flux2Quantize.OutputBytes(random, transformerQuantization);
            string suffix = transformerQuantization == WeightQuantization.Fp8 ? "-fp8" : "-int8";
            Flux2Quantize.WriteTransformer(random, Path.Combine(outDir, Path.GetFileNameWithoutExtension(bflFile) + suffix + ".safetensors"), transformerQuantization,
                new Inline(b => progress?.Invoke("transformer", b, qTotal)), meta);
        }
        else
        {
            var tSpecs = Flux2RandomCheckpoint.Specs(card.Transformer, layout, dtype);
            long tTotal = tSpecs.Sum(s => s.ByteLength);
            Flux2RandomCheckpoint.Write(card.Transformer, layout, outDir, bflFile, dtype, seed, new Inline(b => progress?.Invoke("transformer", b, tTotal)));
        }

        // VAE
        var vaeConfig = Flux2ModelFolder.VaeConfig(card);
        var vaeSpecs = VaeSpecs(vaeConfig, dtype);
        long vTotal = vaeSpecs.Sum(s => s.ByteLength);
        var vaeProgress = new Inline(b => progress?.Invoke("vae", b, vTotal));
        if (layout == Flux2Layout.Bfl)
            SafetensorsWriter.Write(Path.Combine(outDir, Flux2ModelFolder.AeFile), vaeSpecs, s => VaeTensor(s, seed), meta, vaeProgress);
        else
        {
            string vaeDir = Path.Combine(outDir, "vae");
            Directory.CreateDirectory(vaeDir);
            int levels = vaeConfig.NumLevels;
            var diff = vaeSpecs.Where(s => !s.Name.EndsWith("num_batches_tracked", StringComparison.Ordinal))
                .Select(s => (Bfl: s, D: new TensorSpec(AutoEncoderKeyMap.ToDiffusers(s.Name, levels), s.DType,
                    AutoEncoderKeyMap.IsAttentionWeight(s.Name) ? s.Shape[..2] : s.Shape))).ToList();
            var byName = diff.ToDictionary(d => d.D.Name, d => d.Bfl);
            SafetensorsWriter.Write(Path.Combine(vaeDir, "diffusion_pytorch_model.safetensors"), diff.Select(d => d.D).ToList(),
                s => { var t = VaeTensor(byName[s.Name], seed); return t.dim() == 4 && s.Shape.Length == 2 ? t.view(s.Shape) : t; }, meta, vaeProgress);
            WriteJson(Path.Combine(vaeDir, "config.json"), DiffusersVaeConfig(vaeConfig));
        }

        WriteTextEncoder(outDir, Flux2ModelFolder.TextEncoderConfig(card), dtype, seed, meta, progress);
        CopyTokenizer(outDir);

        if (layout == Flux2Layout.Diffusers)
            WriteJson(Path.Combine(outDir, "model_index.json"), new JsonObject
            {
                ["_class_name"] = "Flux2KleinPipeline",
                ["_diffusers_version"] = "0.37.0",
                ["scheduler"] = new JsonArray("diffusers", "FlowMatchEulerDiscreteScheduler"),
                ["text_encoder"] = new JsonArray("transformers", "Qwen3ForCausalLM"),
                ["tokenizer"] = new JsonArray("transformers", "Qwen2TokenizerFast"),
                ["transformer"] = new JsonArray("diffusers", "Flux2Transformer2DModel"),
                ["vae"] = new JsonArray("diffusers", "AutoencoderKLFlux2"),
            });
        // The marker last: a folder that has it is complete (a write that failed part-way leaves none).
        WriteJson(Path.Combine(outDir, Flux2ModelFolder.MarkerFile), new JsonObject { ["model_card"] = card.Name, ["random_seed"] = seed, ["dtype"] = dtype.ToString() });
    }

    /// <summary>A random HF Qwen3 <c>text_encoder/</c> (sharded above <see cref="TextEncoderShardBytes"/>, with config.json): shared by every family's writer.</summary>
    public static void WriteTextEncoder(string outDir, Qwen3Config teConfig, ScalarType dtype, long seed, IReadOnlyDictionary<string, string> meta,
        Action<string, long, long>? progress)
    {
        string teDir = Path.Combine(outDir, "text_encoder");
        Directory.CreateDirectory(teDir);
        var teSpecs = TextEncoderSpecs(teConfig, dtype);
        long teTotal = teSpecs.Sum(s => s.ByteLength);
        var teProgress = new Inline(b => progress?.Invoke("text_encoder", b, teTotal));
        if (teTotal <= TextEncoderShardBytes)
            SafetensorsWriter.Write(Path.Combine(teDir, "model.safetensors"), teSpecs, s => RandomTensor(s, seed), meta, teProgress);
        else
            SafetensorsWriter.WriteSharded(teDir, "model", teSpecs, s => RandomTensor(s, seed), TextEncoderShardBytes, meta, teProgress);
        WriteJson(Path.Combine(teDir, "config.json"), HfQwen3Config(teConfig, dtype));
    }

    /// <summary>Copies the real Qwen3 tokenizer data (models/qwen3-tokenizer) to <c>tokenizer/</c>, each file complete or absent.</summary>
    public static void CopyTokenizer(string outDir)
    {
        string tokDir = Path.Combine(outDir, "tokenizer");
        Directory.CreateDirectory(tokDir);
        foreach (var f in Directory.GetFiles(Path.Combine(ModelCards.Directory, "qwen3-tokenizer")))
            AtomicFile.Copy(f, Path.Combine(tokDir, Path.GetFileName(f)));
    }

    /// <summary>The VAE's state dict (BFL keys, module order) for <paramref name="config"/>: built once to read names and shapes.</summary>
    public static IReadOnlyList<TensorSpec> VaeSpecs(AutoEncoderConfig config, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var vae = new Flux2Autoencoder(config);
        var st = SafetensorsDTypes.FromScalarType(dtype);
        return vae.state_dict().Select(kv => new TensorSpec(kv.Key, kv.Value.dtype == ScalarType.Int64 ? SafetensorsDType.I64 : st, kv.Value.shape)).ToList();
    }

    /// <summary>HF Qwen3 tensor names and shapes (<c>model.*</c>; <c>lm_head.weight</c> unless embeddings are tied).</summary>
    public static IReadOnlyList<TensorSpec> TextEncoderSpecs(Qwen3Config c, ScalarType dtype)
    {
        var st = SafetensorsDTypes.FromScalarType(dtype);
        long h = c.HiddenSize, q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim, i = c.IntermediateSize;
        var list = new List<TensorSpec>();
        void Add(string name, params long[] shape) => list.Add(new TensorSpec(name, st, shape));
        Add("model.embed_tokens.weight", c.VocabSize, h);
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", h);
            Add(p + "mlp.down_proj.weight", h, i);
            Add(p + "mlp.gate_proj.weight", i, h);
            Add(p + "mlp.up_proj.weight", i, h);
            Add(p + "post_attention_layernorm.weight", h);
            Add(p + "self_attn.k_norm.weight", c.HeadDim);
            Add(p + "self_attn.k_proj.weight", kv, h);
            Add(p + "self_attn.o_proj.weight", h, q);
            Add(p + "self_attn.q_norm.weight", c.HeadDim);
            Add(p + "self_attn.q_proj.weight", q, h);
            Add(p + "self_attn.v_proj.weight", kv, h);
        }
        Add("model.norm.weight", h);
        if (!c.TieWordEmbeddings) Add("lm_head.weight", c.VocabSize, h);
        return list;
    }

    /// <summary>A 1-D tensor (norm weight) ~ 1 + 0.1 N(0,1); a matrix ~ N(0,1) / sqrt(fan-in): <see cref="RandomWeights.Tensor"/>.</summary>
    static Tensor RandomTensor(TensorSpec s, long seed) => RandomWeights.Tensor(s, seed);

    /// <summary>VAE values: conv/linear weights random; GroupNorm weight 1, every bias 0; BatchNorm mean 0, var 1, count 0.</summary>
    internal static Tensor VaeTensor(TensorSpec s, long seed)
    {
        var dt = s.DType.ToScalarType();
        if (s.Name.EndsWith("num_batches_tracked", StringComparison.Ordinal)) return zeros(s.Shape, ScalarType.Int64);
        if (s.Name.EndsWith("running_var", StringComparison.Ordinal)) return ones(s.Shape, dt);
        if (s.Name.EndsWith(".bias", StringComparison.Ordinal) || s.Name.EndsWith("running_mean", StringComparison.Ordinal)) return zeros(s.Shape, dt);
        if (s.Shape.Length == 1) return ones(s.Shape, dt);
        return RandomTensor(s, seed);
    }

    /// <summary>diffusers <c>AutoencoderKLFlux2</c> config.json for <paramref name="c"/>.</summary>
    public static JsonObject DiffusersVaeConfig(AutoEncoderConfig c) => new()
    {
        ["_class_name"] = "AutoencoderKLFlux2",
        ["_diffusers_version"] = "0.37.0",
        ["in_channels"] = c.InChannels,
        ["out_channels"] = c.OutCh,
        ["block_out_channels"] = new JsonArray(c.ChMult.Select(m => (JsonNode)(c.Ch * m)).ToArray()),
        ["layers_per_block"] = c.NumResBlocks,
        ["latent_channels"] = c.ZChannels,
        ["norm_num_groups"] = c.GroupNormGroups,
        ["sample_size"] = c.Resolution,
        ["patch_size"] = new JsonArray(c.PatchSize.Select(p => (JsonNode)p).ToArray()),
        ["batch_norm_eps"] = c.BatchNormEps,
        ["batch_norm_momentum"] = c.BatchNormMomentum,
    };

    /// <summary>An HF <c>Qwen3ForCausalLM</c> config.json for <paramref name="c"/>.</summary>
    public static JsonObject HfQwen3Config(Qwen3Config c, ScalarType dtype) => new()
    {
        ["architectures"] = new JsonArray("Qwen3ForCausalLM"),
        ["model_type"] = "qwen3",
        ["vocab_size"] = c.VocabSize,
        ["hidden_size"] = c.HiddenSize,
        ["intermediate_size"] = c.IntermediateSize,
        ["num_hidden_layers"] = c.NumHiddenLayers,
        ["num_attention_heads"] = c.NumAttentionHeads,
        ["num_key_value_heads"] = c.NumKeyValueHeads,
        ["head_dim"] = c.HeadDim,
        ["hidden_act"] = "silu",
        ["rope_theta"] = c.RopeTheta,
        ["rms_norm_eps"] = c.RmsNormEps,
        ["tie_word_embeddings"] = c.TieWordEmbeddings,
        ["torch_dtype"] = dtype == ScalarType.BFloat16 ? "bfloat16" : "float32",
    };

    /// <summary>A JSON file, complete or absent (<see cref="AtomicFile"/>).</summary>
    internal static void WriteJson(string path, JsonNode node) => AtomicFile.WriteAllText(path, node.ToJsonString(Indented) + "\n");

    /// <summary>The random transformer (<see cref="Flux2RandomCheckpoint.Parameter"/>) as a tensor source with BFL keys: nothing on disk.</summary>
    sealed class RandomTransformerSource : ITensorSource
    {
        readonly Dictionary<string, TensorEntry> byName;
        readonly long seed;
        readonly ScalarType dtype;

        public RandomTransformerSource(Flux2Config config, long seed, ScalarType dtype)
        {
            this.seed = seed;
            this.dtype = dtype;
            var st = SafetensorsDTypes.FromScalarType(dtype);
            Entries = Flux2Specs.Parameters(config).Select(p => new TensorEntry(p.Name, st, p.Shape, 0, p.ElementCount * st.Size(), "(random)")).ToList();
            byName = Entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
        }

        public IReadOnlyList<TensorEntry> Entries { get; }
        public bool TryGetEntry(string name, out TensorEntry entry) => byName.TryGetValue(name, out entry!);

        public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
        {
            var t = Flux2RandomCheckpoint.Parameter(name, byName[name].Shape, this.dtype, seed);
            if (dtype is { } d && d != t.dtype) { var c = t.to(d); t.Dispose(); t = c; }
            return t;
        }

        public Tensor LoadRaw(string name) => throw new NotSupportedException("a random source has no stored bytes");
        public void Dispose() { }
    }

    internal sealed class Inline(Action<long> report) : IProgress<long>
    {
        public void Report(long value) => report(value);
    }
}
