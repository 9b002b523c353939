using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Text;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2;

/// <summary>
/// A complete FLUX.2 model folder: transformer, autoencoder, Qwen3 text encoder and tokenizer.
/// <list type="bullet">
/// <item>BFL layout: <c>flux-2-*.safetensors</c> (transformer, BFL keys), <c>ae.safetensors</c> (BFL AE keys),
/// <c>text_encoder/</c> (HF Qwen3 keys, config.json, sharded when large), <c>tokenizer/</c>.</item>
/// <item>diffusers layout: <c>model_index.json</c>, <c>transformer/</c>, <c>vae/</c> (diffusers <c>AutoencoderKLFlux2</c>
/// keys + config.json), <c>text_encoder/</c>, <c>tokenizer/</c>.</item>
/// </list>
/// The model card is chosen by (1) <c>inference-server.json</c>'s <c>"model_card"</c> when the folder has one (the
/// random writer records it; the transformer's header shapes must then be that card's); else (2) the card whose transformer parameter shapes the checkpoint holds exactly
/// (every card under models/ is tried, in name order; shapes are read from headers, no tensor is loaded).
/// </summary>
public static class Flux2ModelFolder
{
    /// <summary>The file naming the model card a folder was written for.</summary>
    public const string MarkerFile = ModelCards.MarkerFile;
    /// <summary>BFL's autoencoder file name.</summary>
    public const string AeFile = "ae.safetensors";

    /// <summary>BFL when the folder has no model_index.json but a top-level transformer file; diffusers when it has model_index.json or transformer/.</summary>
    public static Flux2Layout DetectLayout(string dir)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: no such model folder");
        if (File.Exists(Path.Combine(dir, "model_index.json")) || Directory.Exists(Path.Combine(dir, "transformer"))) return Flux2Layout.Diffusers;
        if (TransformerFiles(dir).Length > 0) return Flux2Layout.Bfl;
        throw new FileNotFoundException($"{dir}: neither a diffusers folder (model_index.json, transformer/) nor a BFL folder (flux-2-*.safetensors next to {AeFile})");
    }

    static string[] TransformerFiles(string dir) =>
        Directory.GetFiles(dir, "*.safetensors").Where(f => Path.GetFileName(f) != AeFile).Order(StringComparer.Ordinal).ToArray();

    /// <summary>Path of the transformer checkpoint (file or folder) in a folder of <paramref name="layout"/>.</summary>
    public static string TransformerPath(string dir, Flux2Layout layout)
    {
        if (layout == Flux2Layout.Diffusers) return Checkpoint.Require(Path.Combine(dir, "transformer"), folder: true);
        var files = TransformerFiles(dir);
        return files.Length switch
        {
            0 => throw new FileNotFoundException($"{dir}: no transformer file (flux-2-*.safetensors)"),
            1 => files[0],
            _ => throw new InvalidDataException($"{dir}: several transformer files ({string.Join(", ", files.Select(Path.GetFileName))}); keep one"),
        };
    }

    /// <summary>Picks the model card (see the class summary).</summary>
    public static Flux2ModelCard DetectCard(string dir)
    {
        var layout = DetectLayout(dir);
        string tPath = TransformerPath(dir, layout);
        using var source = Checkpoint.Open(tPath);
        if (ModelCards.MarkedCard(dir) is { } marked)
        {
            // Checked from the headers before anything is built: a wrong marker must not cost the card's whole model first.
            var markedCard = ModelCards.Load(marked);
            if (Mismatch(source, markedCard.Transformer) is { } why)
                throw new InvalidDataException($"{Path.Combine(Path.GetFullPath(dir), MarkerFile)} names model card '{marked}', but the transformer {tPath} is not that card's: {why}");
            return markedCard;
        }
        foreach (var name in ModelCards.NamesOf("flux2"))
        {
            Flux2ModelCard card;
            try { card = ModelCards.Load(name); } catch (ArgumentException) { continue; }
            if (Mismatch(source, card.Transformer) is null) return card;
        }
        throw new InvalidDataException($"{dir}: the transformer's tensor shapes match no flux2 model card in {ModelCards.Directory} ({string.Join(", ", ModelCards.NamesOf("flux2"))}); add {MarkerFile} with {{\"model_card\": NAME}}");
    }

    /// <summary>How the checkpoint's header shapes differ from <paramref name="config"/>'s parameters, or null when they are exactly those.</summary>
    static string? Mismatch(ITensorSource source, Flux2Config config)
    {
        var expected = Flux2Specs.Parameters(config).Select(s => (s.Name, s.Shape));
        if (Flux2Checkpoint.IsDiffusers(source))
        {
            // The file's own names and shapes first (the message names what is really stored), then the exact BFL view.
            if (ShapeCheck.FirstDifference(source, Flux2Diffusers.Specs(config).Select(s => (s.Name, s.Shape)), _ => true) is { } why) return why;
            // The diffusers view needs the config; a wrong one fails on shapes, which is the answer.
            try { return ShapeCheck.FirstDifference(Flux2Diffusers.AsBfl(new NonDisposingSource(source), config), expected); }
            catch (Exception e) when (e is InvalidDataException or ArgumentException or KeyNotFoundException) { return e.Message; }
        }
        // An FP8 checkpoint adds per-layer scales (and markers) next to the parameters: they do not count.
        return ShapeCheck.FirstDifference(source, expected, QuantizedCheckpoint.IsQuantizationExtra);
    }

    /// <summary>VAE config of a card's component name (models/vae/NAME.json).</summary>
    public static AutoEncoderConfig VaeConfig(Flux2ModelCard card) => AutoEncoderConfig.Load(Path.Combine(ModelCards.Directory, "vae", card.Vae + ".json"));

    /// <summary>Text-encoder config of a card's component name (models/text-encoders/NAME.json).</summary>
    public static Qwen3Config TextEncoderConfig(Flux2ModelCard card) => ModelCards.TextEncoder(card.TextEncoder);

    /// <summary>
    /// Loads every component in <paramref name="dtype"/> (bfloat16 or float32; the VAE's BatchNorm statistics stay float32)
    /// on <paramref name="device"/> (default the CPU). The transformer is built on the meta device and given uninitialised
    /// storage on the device, the text encoder is built there uninitialised, and each tensor is read straight into its place
    /// (no whole CPU copy of the model); the small VAE is materialized and loaded on the CPU, then moved.
    /// Strict: a missing file names the file; a missing, unexpected or mis-shaped tensor names the tensor.
    /// </summary>
    public static Flux2Model Load(string dir, ScalarType dtype = ScalarType.BFloat16, Device? device = null) =>
        Load(dir, new ModelLoadOptions(dtype) { Device = device });

    /// <summary>
    /// Loads every component with <paramref name="options"/>: the dtype, the device, and the transformer's weight quantization
    /// (a transformer that is already 8-bit, e.g. the official FP8 file, loads as it is whatever is asked; see <see cref="Flux2Checkpoint.Load(Flux2Transformer, ITensorSource, WeightQuantization, bool, ScalarType?)"/>).
    /// The VAE and the text encoder are never quantized.
    /// </summary>
    public static Flux2Model Load(string dir, ModelLoadOptions options)
    {
        var dtype = options.DType;
        dir = Path.GetFullPath(dir);
        var device = options.Device ?? CPU;
        var layout = DetectLayout(dir);
        var card = DetectCard(dir);
        var report = new List<string> { $"folder {dir}: layout {layout.ToString().ToLowerInvariant()}, model card {card.Name}, dtype {dtype}, device {device}" };
        string tPath = TransformerPath(dir, layout);
        string vaePath = layout == Flux2Layout.Bfl ? Checkpoint.Require(Path.Combine(dir, AeFile), folder: false) : Checkpoint.Require(Path.Combine(dir, "vae"), folder: true);
        string tePath = Checkpoint.Require(Path.Combine(dir, "text_encoder"), folder: true);
        string tokPath = Checkpoint.Require(Path.Combine(dir, "tokenizer"), folder: true);
        // The tokenizer (0.6 s of parsing its 150k-entry vocabulary) loads on another thread while the weights are read.
        var tokenizerLoad = Task.Run(() => Qwen3Tokenizer.Load(tokPath));

        Flux2Transformer? transformer = null;
        Flux2Autoencoder? vae = null;
        IDisposable? encoderLease = null;
        var meter = options.Meter;
        var read = options.ReadOptionsFor(tPath, vaePath, tePath);
        try
        {
            LoadReport r;
            using (var scope = meter?.Begin("transformer", tPath))
            {
                // Built on meta (no memory, no initialisation), swapped to 8-bit layers if asked, then given storage on the device.
                var t = transformer = LoadMeter.Build(scope, () => new Flux2Transformer(card.Transformer, device: MetaModules.Meta, dtype: dtype));
                r = Named(tPath, () =>
                {
                    using var source = Checkpoint.Open(tPath, read);
                    return Flux2Checkpoint.Load(t, source, options.Quantization, strict: true, dtype: dtype, device: device);
                });
            }
            report.Add($"transformer {Rel(dir, tPath)}: {r.Loaded} tensors; weights {transformer.WeightFormat}{LoadMeter.LastTiming(meter)}");

            using (var scope = meter?.Begin("vae", vaePath))
            {
                // Built on meta and given uninitialised storage (its random init measured 0.6-1.2 s), then every tensor is loaded.
                vae = LoadMeter.Build(scope, () => MetaModules.Materialize(new Flux2Autoencoder(VaeConfig(card), MetaModules.Meta), CPU));
                using var src = Checkpoint.Open(vaePath, read);
                // diffusers' converter drops bn.num_batches_tracked (unused at inference): the one tensor allowed to be absent.
                r = vae.LoadWeights(src, strict: false);
                if (r.Missing.Contains("bn.num_batches_tracked"))
                    using (no_grad()) vae.state_dict()["bn.num_batches_tracked"].zero_();   // not in the file: zero, as a fresh BatchNorm
                r = r with { Missing = r.Missing.Where(m => m != "bn.num_batches_tracked").ToList() };
                r.ThrowIfNotClean(vaePath);
                vae.To(dtype, device.type == DeviceType.CPU ? null : device);
            }
            report.Add($"vae {Rel(dir, vaePath)}: {r.Loaded} tensors ({card.Vae}){LoadMeter.LastTiming(meter)}");

            var (encoder, lease, teConfig, how) = LoadMeter.Measure(meter, "text encoder", tePath,
                () => Named(tePath, () => SharedTextEncoders.Load(options.SharedTextEncoders, tePath, TextEncoderConfig(card), dtype, device, dir, read)));
            encoderLease = lease;
            report.Add($"text encoder {Rel(dir, tePath)}: {teConfig} ({card.TextEncoder}), {how}{LoadMeter.LastTiming(meter)}");

            var tokenizer = LoadMeter.Measure(meter, "tokenizer", tokPath, () => tokenizerLoad.GetAwaiter().GetResult());
            report.Add($"tokenizer {Rel(dir, tokPath)}{LoadMeter.LastTiming(meter)}");
            return new Flux2Model(dir, layout, card, transformer, vae, encoder, tokenizer, dtype, report, teConfig.OutputLayers, encoderLease);
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

    /// <summary>Runs a load, putting <paramref name="path"/> in front of a mismatch message that does not name it.</summary>
    static T Named<T>(string path, Func<T> load)
    {
        try { return load(); }
        catch (InvalidDataException e) when (!e.Message.Contains(path, StringComparison.Ordinal)) { throw new InvalidDataException($"{path}: {e.Message}", e); }
    }

    static string Rel(string dir, string path) => Path.GetRelativePath(dir, path);
}

/// <summary>A loaded FLUX.2 model: every component, the card it was matched to, and what was loaded.</summary>
/// <param name="textLayers">Hidden states the features stack (default the encoder config's output layers).</param>
/// <param name="textEncoderLease">What to dispose instead of the text encoder when it is shared (<see cref="SharedTextEncoders"/>).</param>
public sealed class Flux2Model(string directory, Flux2Layout layout, Flux2ModelCard card, Flux2Transformer transformer, Flux2Autoencoder vae,
    Qwen3TextEncoder textEncoder, Qwen3Tokenizer tokenizer, ScalarType dtype, IReadOnlyList<string> report, int[]? textLayers = null,
    IDisposable? textEncoderLease = null) : IDisposable
{
    /// <summary>The Qwen3 hidden states klein stacks (card: 9, 18, 27).</summary>
    public int[] TextLayers { get; } = textLayers ?? textEncoder.Config.OutputLayers;
    public string Directory { get; } = directory;
    public Flux2Layout Layout { get; } = layout;
    public Flux2ModelCard Card { get; } = card;
    public Flux2Transformer Transformer { get; } = transformer;
    public Flux2Autoencoder Vae { get; } = vae;
    public Qwen3TextEncoder TextEncoder { get; } = textEncoder;
    public Qwen3Tokenizer Tokenizer { get; } = tokenizer;
    public ScalarType DType { get; } = dtype;
    /// <summary>Where the components live (the transformer's device).</summary>
    public Device Device => Transformer.Device;
    /// <summary>How the transformer's weights are stored and multiplied on its current device (see <see cref="Flux2Transformer.WeightFormat"/>).</summary>
    public string WeightFormat => Transformer.WeightFormat;
    /// <summary>One line per component: what was loaded from where.</summary>
    public IReadOnlyList<string> LoadReport { get; } = report;

    public void Dispose()
    {
        Transformer.Dispose();
        Vae.Dispose();
        (textEncoderLease ?? TextEncoder).Dispose();
    }
}
