using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Lora;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Runtime;
using InferenceServer.Models.Weights;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Lora;
using static TorchSharp.torch;

namespace InferenceServer.Server.Engine;

/// <summary>A loaded model (any family) and its pipeline. Only the engine thread runs it; <see cref="Prepare"/> is safe from any thread.</summary>
public sealed class ServedModel(string name, GenerationPipeline pipeline, string device, bool isDefault) : IDisposable
{
    public string Name { get; } = name;
    public GenerationPipeline Pipeline { get; } = pipeline;
    public bool Ready { get; internal set; }
    public ModelDescriptor Describe()
    {
        var b = Pipeline.Backend;
        return new(Name, b.Family, b.Sampling.DefaultSteps, b.AcceptsReferences ? Pipeline.Options.MaxReferences : 0, b.WeightFormat, device, isDefault, Ready, created,
            Pipeline.Options.MaxLorasPerRequest, merged.ToList());
    }
    readonly DateTimeOffset created = DateTimeOffset.UtcNow;
    readonly List<string> merged = [];

    /// <summary>
    /// Merges the adapter file into this model's transformer weights at <paramref name="scale"/> (before the model serves);
    /// false, with the loader's reason, when the adapter does not fit this model's layers.
    /// </summary>
    public bool TryMerge(string path, string name, double scale, Action<string>? log, out string? refusal)
    {
        LoraAdapter adapter;
        try { adapter = Pipeline.LoadAdapter(path, name); }
        catch (InvalidDataException e)
        {
            refusal = e.Message;
            return false;
        }
        using (adapter)
        {
            Pipeline.Backend.Lora.Merge(adapter, scale);
            log?.Invoke($"{Name}: merged into the weights at scale {scale:0.###}: {adapter}");
        }
        merged.Add(LoraSpec.Describe(name, scale));
        refusal = null;
        return true;
    }

    /// <summary>The server's limits as the pipeline's one limits record.</summary>
    public static PipelineOptions PipelineOptionsFor(LimitOptions l, LoraOptions? lora = null) => new()
    {
        MaxLorasPerRequest = (lora ?? new()).MaxPerRequest,
        MaxLoraScale = (lora ?? new()).MaxScale,
        MaxReferences = l.MaxReferences,
        MaxImages = l.MaxImages,
        MaxSteps = l.MaxSteps,
        MaxPromptChars = l.MaxPromptChars,
        Sizes = new SizeLimits { MinSide = l.MinSide, MaxSide = l.MaxSide, MaxPixels = l.MaxOutputPixels },
        Decode = new ImageLimits { MaxPixels = l.MaxInputPixels },
    };

    /// <summary>
    /// Loads a model folder of any registered family with the server's limits; <paramref name="log"/> gets one line per component
    /// (with its timing) and a line per quarter of each, <paramref name="phase"/> the load's progress as it reads.
    /// </summary>
    /// <param name="shared">Text encoders shared with the other models of this server (identical weights load once).</param>
    public static ServedModel Load(string dir, string? name, ServerOptions options, bool isDefault = true, Action<string>? log = null, SharedTextEncoders? shared = null,
        Action<string>? phase = null)
    {
        var (dtype, quantization) = Cli.WeightsChoice.Parse(options.DType);
        var device = ComputeDevice.Resolve(options.Device);
        var reporter = new LoadPhaseReporter(name ?? Path.GetFileName(dir.TrimEnd(Path.DirectorySeparatorChar)), phase ?? (_ => { }), log ?? (_ => { }));
        var meter = new LoadMeter(reporter.Report);
        var backend = ModelFamilies.Load(dir, new ModelLoadOptions(dtype, quantization)
            { Device = device, SharedTextEncoders = shared, Meter = meter, Mapping = WeightMappings.Parse(options.MemoryMap) });
        foreach (var line in backend.LoadReport) log?.Invoke(line);
        var pipeline = new GenerationPipeline(backend, PipelineOptionsFor(options.Limits, options.Lora));
        return new ServedModel(name ?? backend.CardName, pipeline, device.ToString(), isDefault);
    }

    /// <summary>
    /// Every model of the options, in order (the first is the default): <c>--model DIR</c> or <c>--model NAME=DIR</c> entries,
    /// named by NAME, else by the folder name; without any, the embedded tiny random model.
    /// </summary>
    public static IReadOnlyList<ServedModel> LoadAll(ServerOptions o, Action<string>? log = null, Action<string>? phase = null)
    {
        var specs = o.Models.Count > 0 ? o.Models.Select(ParseSpec).ToList()
            : [(o.ModelName ?? "flux2-tiny-random", EnsureTinyModel(o.CacheDirectory))];
        if (o.Models.Count == 1 && o.ModelName is { } single) specs[0] = (single, specs[0].Dir);
        var duplicate = specs.GroupBy(s => s.Name, StringComparer.OrdinalIgnoreCase).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null) throw new ArgumentException($"--model: the name '{duplicate.Key}' is given to {duplicate.Count()} models; name them with NAME=DIR");
        var loaded = new List<ServedModel>();
        // Only several models can share a text encoder (hashing the weights costs a read of them).
        var shared = specs.Count > 1 ? new SharedTextEncoders() : null;
        try
        {
            foreach (var (n, dir) in specs) loaded.Add(Load(dir, n, o, isDefault: loaded.Count == 0, log, shared, phase));
            foreach (var spec in o.Lora.Merge) MergeIntoAll(loaded, LoraSpec.Parse(spec), o.Lora.Directory, log);
            return loaded;
        }
        catch
        {
            foreach (var m in loaded) m.Dispose();
            throw;
        }
    }

    /// <summary><c>--lora-merge NAME[:SCALE]</c>: into every model the adapter fits; an adapter that fits none stops the start.</summary>
    static void MergeIntoAll(IReadOnlyList<ServedModel> models, LoraSpec spec, string? directory, Action<string>? log)
    {
        string path;
        try { path = spec.Resolve(directory); }
        catch (Exception e) when (e is ArgumentException or FileNotFoundException) { throw new ArgumentException($"--lora-merge: {e.Message}", e); }
        string name = Path.GetFileNameWithoutExtension(path);
        var refusals = new List<string>();
        int fitted = 0;
        foreach (var m in models)
        {
            if (m.TryMerge(path, name, spec.Scale, log, out var refusal)) fitted++;
            else refusals.Add($"{m.Name}: {refusal}");
        }
        if (fitted == 0)
            throw new InvalidDataException($"--lora-merge {LoraSpec.Describe(spec.NameOrFile, spec.Scale)}: the adapter fits none of the served models ({string.Join("; ", refusals)})");
    }

    /// <summary>"NAME=DIR" or "DIR" (named after the folder).</summary>
    static (string Name, string Dir) ParseSpec(string spec)
    {
        int eq = spec.IndexOf('=');
        if (eq > 0 && !Directory.Exists(spec)) return (spec[..eq], Path.GetFullPath(spec[(eq + 1)..]));
        string dir = Path.GetFullPath(spec);
        return (Path.GetFileName(dir.TrimEnd(Path.DirectorySeparatorChar)), dir);
    }

    /// <summary>
    /// The embedded tiny random-weight model (noise images, for a first try and for tests), written once under
    /// <paramref name="cacheDirectory"/> (default $XDG_CACHE_HOME or ~/.cache, then inference-server/flux2-tiny-random).
    /// </summary>
    public static string EnsureTinyModel(string? cacheDirectory)
    {
        string xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") ?? "";
        string root = cacheDirectory ?? (xdg.Length > 0 ? Path.Combine(xdg, "inference-server")
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "inference-server"));
        string dir = Path.Combine(root, "flux2-tiny-random");
        if (File.Exists(Path.Combine(dir, ModelCards.MarkerFile))) return dir;
        string tmp = dir + ".tmp-" + Environment.ProcessId;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Flux2RandomModel.Write(ModelCards.Load("flux2-tiny"), Flux2Layout.Bfl, tmp, ScalarType.Float32, seed: 1);
        try { Directory.Move(tmp, dir); }
        catch (IOException) when (File.Exists(Path.Combine(dir, ModelCards.MarkerFile))) { Directory.Delete(tmp, true); }   // another process won
        return dir;
    }

    public void Dispose() => Pipeline.Dispose();
}
