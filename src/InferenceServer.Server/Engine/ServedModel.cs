using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Runtime;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Hosting;
using static TorchSharp.torch;

namespace InferenceServer.Server.Engine;

/// <summary>A loaded model and its pipeline. Only the engine thread runs it; <see cref="Prepare"/> is safe from any thread.</summary>
public sealed class ServedModel(string name, GenerationPipeline pipeline, string dtype, string device, bool isDefault) : IDisposable
{
    public string Name { get; } = name;
    public GenerationPipeline Pipeline { get; } = pipeline;
    public bool Ready { get; internal set; }
    public ModelDescriptor Describe() => new(Name, "flux2", Pipeline.Model.Card.Sampling.DefaultSteps, Pipeline.Options.MaxReferences,
        dtype, device, isDefault, Ready, created);
    readonly DateTimeOffset created = DateTimeOffset.UtcNow;

    /// <summary>Loads a model folder with the server's limits; <paramref name="log"/> gets one line per component.</summary>
    public static ServedModel Load(string dir, string? name, ServerOptions options, Action<string>? log = null)
    {
        var (dtype, quantization) = Cli.WeightsChoice.Parse(options.DType);
        var device = ComputeDevice.Resolve(options.Device);
        var model = Flux2ModelFolder.Load(dir, new Flux2LoadOptions(dtype, quantization) { Device = device });
        foreach (var line in model.LoadReport) log?.Invoke(line);
        var l = options.Limits;
        var pipeline = new GenerationPipeline(model, new PipelineOptions
        {
            MaxReferences = l.MaxReferences,
            Sizes = new SizeLimits { MinSide = l.MinSide, MaxSide = l.MaxSide, MaxPixels = l.MaxOutputPixels },
            Decode = new ImageLimits { MaxPixels = l.MaxInputPixels },
        });
        return new ServedModel(name ?? model.Card.Name, pipeline, model.WeightFormat, device.ToString(), isDefault: true);
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
        if (File.Exists(Path.Combine(dir, Flux2ModelFolder.MarkerFile))) return dir;
        string tmp = dir + ".tmp-" + Environment.ProcessId;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Flux2RandomModel.Write(ModelCards.Load("flux2-tiny"), Flux2Layout.Bfl, tmp, ScalarType.Float32, seed: 1);
        try { Directory.Move(tmp, dir); }
        catch (IOException) when (File.Exists(Path.Combine(dir, Flux2ModelFolder.MarkerFile))) { Directory.Delete(tmp, true); }   // another process won
        return dir;
    }

    /// <summary>One small generation so the first request does not pay for lazy initialisation.</summary>
    public void WarmUp()
    {
        var p = Pipeline.Prepare(new GenerationRequest { Prompt = "warm-up", Size = new SizeRequest("64x64"), Steps = 1, Seed = 0 });
        var r = Pipeline.GenerateBatch([new BatchEntry(p, CancellationToken.None)]);
        if (r[0].Error is { } e) throw new InvalidOperationException($"warm-up of {Name} failed: {e.Message}", e);
    }

    public void Dispose()
    {
        Pipeline.Dispose();
        Pipeline.Model.Dispose();
    }
}
