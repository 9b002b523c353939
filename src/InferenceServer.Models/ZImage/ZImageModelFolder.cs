using InferenceServer.Models.Quantization;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Text;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// A Z-Image(-Turbo) model folder: transformer, FLUX.1 autoencoder, Qwen3 text encoder and tokenizer.
/// <list type="bullet">
/// <item>diffusers layout (the release): <c>transformer/</c> (sharded, config.json), <c>vae/</c>, <c>text_encoder/</c>, <c>tokenizer/</c>.</item>
/// <item>single-file layout: one top-level transformer <c>*.safetensors</c> in the official/ComfyUI naming (optional
/// <c>model.diffusion_model.</c> prefix, fused qkv; see <see cref="ZImageCheckpoint"/>) next to <c>ae.safetensors</c> or
/// <c>vae/</c>, <c>text_encoder/</c> and <c>tokenizer/</c>.</item>
/// </list>
/// The card: <c>inference-server.json</c>'s <c>"model_card"</c> when present, else zimage-turbo's sampling defaults with
/// the transformer config read from the folder (config.json, else the tensor shapes).
/// </summary>
public static class ZImageModelFolder
{
    public const string AeFile = "ae.safetensors";
    public const string DefaultCard = "zimage-turbo";

    /// <summary>The transformer checkpoint: <c>transformer/</c>, else the one top-level *.safetensors that is not the AE.</summary>
    public static string TransformerPath(string dir)
    {
        string folder = Path.Combine(dir, "transformer");
        if (Directory.Exists(folder)) return folder;
        var files = Directory.GetFiles(dir, "*.safetensors").Where(f => Path.GetFileName(f) != AeFile).Order(StringComparer.Ordinal).ToArray();
        return files.Length switch
        {
            1 => files[0],
            0 => throw new FileNotFoundException($"{dir}: no transformer (neither transformer/ nor a top-level *.safetensors)"),
            _ => throw new InvalidDataException($"{dir}: several transformer files ({string.Join(", ", files.Select(Path.GetFileName))}); keep one"),
        };
    }

    /// <summary>True when the folder's transformer tensors are Z-Image's (names read from headers, nothing loaded).</summary>
    public static bool Recognises(string dir)
    {
        try
        {
            using var source = Checkpoint.Open(TransformerPath(dir));
            return ZImageCheckpoint.IsZImage(source.Entries.Select(e => e.Name));
        }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException or DirectoryNotFoundException) { return false; }
    }

    /// <summary>Loads every component (see the class summary); strict: a missing file or tensor is named.</summary>
    public static ZImageModel Load(string dir, ModelLoadOptions options)
    {
        dir = Path.GetFullPath(dir);
        var device = options.Device ?? CPU;
        var dtype = options.DType;
        var card = ZImageModelCard.Load(ModelCards.MarkedCard(dir) ?? DefaultCard);
        string tPath = TransformerPath(dir);
        string vaePath = Directory.Exists(Path.Combine(dir, "vae")) ? Path.Combine(dir, "vae") : Checkpoint.Require(Path.Combine(dir, AeFile), folder: false);
        string tePath = Checkpoint.Require(Path.Combine(dir, "text_encoder"), folder: true);
        string tokPath = Checkpoint.Require(Path.Combine(dir, "tokenizer"), folder: true);
        // The tokenizer (0.6 s of parsing its 150k-entry vocabulary) loads on another thread while the weights are read.
        var tokenizerLoad = Task.Run(() => Qwen3Tokenizer.Load(tokPath));
        var report = new List<string>();

        ZImageTransformer? transformer = null;
        ZImageAutoencoder? vae = null;
        IDisposable? encoderLease = null;
        var meter = options.Meter;
        var read = options.ReadOptionsFor(tPath, vaePath, tePath);
        try
        {
            string transformerLine;
            using (var scope = meter?.Begin("transformer", tPath))
            using (var source = Checkpoint.Open(tPath, read))
            {
                string config = Path.Combine(tPath, "config.json");
                var tc = File.Exists(config) ? ZImageConfig.FromDiffusersConfig(config)
                    : ModelCards.MarkedCard(dir) is not null ? card.Transformer : ZImageConfig.FromTensors(source);
                // The card's shapes against the headers before the transformer is built (a wrong marker would otherwise allocate
                // the card's whole model first). Extra tensors are left to the strict load, which knows every naming's extras.
                var view = ZImageCheckpoint.AsDiffusers(new NonDisposingSource(source));
                if (ShapeCheck.FirstDifference(view, ZImageSpecs.Transformer(tc).Select(s => (s.Name, s.Shape)), _ => true) is { } why)
                    throw new InvalidDataException($"{tPath} is not the transformer of {(File.Exists(config) ? config : $"model card '{card.Name}'")}: {why}");
                // Built on meta (no memory, no initialisation), swapped to 8-bit layers if asked, then given storage on the device.
                transformer = LoadMeter.Build(scope, () => new ZImageTransformer(tc, MetaModules.Meta, dtype));
                var r = ZImageCheckpoint.Load(transformer, source, options.Quantization, strict: true, dtype: dtype, device: device);
                report.Add($"folder {dir}: family zimage ({(ZImageCheckpoint.IsSingleFile(source.Entries.Select(e => e.Name)) ? "single-file" : "diffusers")} transformer), model card {card.Name}, dtype {dtype}, device {device}");
                transformerLine = $"transformer {Path.GetRelativePath(dir, tPath)}: {r.Loaded} tensors, {tc.NLayers} layers, dim {tc.Dim}; weights {WeightQuantizer.Describe(transformer)}";
            }
            report.Add(transformerLine + LoadMeter.LastTiming(meter));

            vae = LoadMeter.Measure(meter, "vae", vaePath,   // the official VAE runs float32
                () => ZImageAutoencoder.Load(vaePath).To(ScalarType.Float32, device.type == DeviceType.CPU ? null : device));
            report.Add($"vae {Path.GetRelativePath(dir, vaePath)}: FLUX.1 AE, latent {vae.Config.LatentChannels} channels, float32{LoadMeter.LastTiming(meter)}");

            var (encoder, lease, teConfig, how) = LoadMeter.Measure(meter, "text encoder", tePath, () => SharedTextEncoders.Load(options.SharedTextEncoders, tePath,
                PromptFormat.ZImage.Configure(ModelCards.TextEncoder(card.TextEncoder)), dtype, device, dir, read));
            encoderLease = lease;
            report.Add($"text encoder {Path.GetRelativePath(dir, tePath)}: {teConfig} (hidden_states[-2]), {how}{LoadMeter.LastTiming(meter)}");

            var tokenizer = LoadMeter.Measure(meter, "tokenizer", tokPath, () => tokenizerLoad.GetAwaiter().GetResult());
            report.Add($"tokenizer {Path.GetRelativePath(dir, tokPath)}{LoadMeter.LastTiming(meter)}");
            return new ZImageModel(dir, card, transformer, vae, encoder, tokenizer, report, teConfig.OutputLayers, encoderLease);
        }
        catch
        {
            _ = tokenizerLoad.ContinueWith(t => t.Exception, TaskScheduler.Default); // observed: the load's own error is the one to report
            transformer?.Dispose();
            vae?.Dispose();
            encoderLease?.Dispose();
            throw;
        }
    }
}

/// <summary>A loaded Z-Image model: every component and what was loaded.</summary>
/// <param name="textLayers">The hidden state the captions are (hidden_states[-2]).</param>
/// <param name="textEncoderLease">What to dispose instead of the text encoder when it is shared (<see cref="SharedTextEncoders"/>).</param>
public sealed class ZImageModel(string directory, ZImageModelCard card, ZImageTransformer transformer, ZImageAutoencoder vae,
    Qwen3TextEncoder textEncoder, Qwen3Tokenizer tokenizer, IReadOnlyList<string> report, int[] textLayers, IDisposable? textEncoderLease = null) : IDisposable
{
    public int[] TextLayers { get; } = textLayers;
    public string Directory { get; } = directory;
    public ZImageModelCard Card { get; } = card;
    public ZImageTransformer Transformer { get; } = transformer;
    public ZImageAutoencoder Vae { get; } = vae;
    public Qwen3TextEncoder TextEncoder { get; } = textEncoder;
    public Qwen3Tokenizer Tokenizer { get; } = tokenizer;
    public IReadOnlyList<string> LoadReport { get; } = report;

    public void Dispose()
    {
        Transformer.Dispose();
        Vae.Dispose();
        (textEncoderLease ?? TextEncoder).Dispose();
    }
}
