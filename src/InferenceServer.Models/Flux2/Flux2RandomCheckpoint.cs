using System.Text.Json;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;
using InferenceServer.Models.Files;

namespace InferenceServer.Models.Flux2;

/// <summary>Checkpoint layouts the transformer can be written in.</summary>
public enum Flux2Layout
{
    /// <summary>One BFL file, e.g. <c>flux-2-klein-4b.safetensors</c>.</summary>
    Bfl,
    /// <summary>diffusers: <c>transformer/</c> with sharded <c>diffusion_pytorch_model-*.safetensors</c>, index and config.json.</summary>
    Diffusers,
}

/// <summary>
/// Random-weight transformer checkpoints of any config, streamed tensor by tensor (a full-size model is never held in
/// memory). Each tensor is drawn from its own generator seeded by (seed, BFL key), so the file equals
/// <see cref="Flux2Transformer.InitRandom"/> with the same seed whatever the layout or write order.
/// </summary>
public static class Flux2RandomCheckpoint
{
    /// <summary>diffusers' base file name inside <c>transformer/</c>.</summary>
    public const string DiffusersBaseName = "diffusion_pytorch_model";

    /// <summary>Default shard size of the diffusers layout (bytes of tensor data per shard).</summary>
    public const long DefaultMaxShardBytes = 5L << 30;

    /// <summary>The tensors a checkpoint of <paramref name="config"/> holds in <paramref name="layout"/>, in write order.</summary>
    public static IReadOnlyList<TensorSpec> Specs(Flux2Config config, Flux2Layout layout, ScalarType dtype)
    {
        var st = SafetensorsDTypes.FromScalarType(dtype);
        return layout == Flux2Layout.Bfl
            ? Flux2Specs.Parameters(config).Select(p => new TensorSpec(p.Name, st, p.Shape)).ToList()
            : Flux2Diffusers.Specs(config).Select(p => new TensorSpec(p.Name, st, p.Shape)).ToList();
    }

    /// <summary>The random value of BFL parameter <paramref name="name"/> for <paramref name="seed"/>.</summary>
    public static Tensor Parameter(string name, long[] shape, ScalarType dtype, long seed)
    {
        var gen = new Generator(TensorSeed(seed, name));
        try { return Flux2Specs.RandomTensor(name, shape, dtype, gen); }
        finally { gen.Dispose(); }
    }

    /// <summary>Per-tensor seed: FNV-1a of the key mixed with the checkpoint seed (<see cref="RandomWeights.TensorSeed"/>).</summary>
    public static ulong TensorSeed(long seed, string name) => RandomWeights.TensorSeed(seed, name);

    /// <summary>
    /// Writes a random checkpoint. BFL: <c>outDir/fileName</c>. diffusers: <c>outDir/transformer/</c> shards, index and
    /// config.json. Returns the path written (file or folder). <paramref name="bytesWritten"/> gets the running data bytes.
    /// </summary>
    public static string Write(Flux2Config config, Flux2Layout layout, string outDir, string fileName, ScalarType dtype, long seed,
        IProgress<long>? bytesWritten = null, long maxShardBytes = DefaultMaxShardBytes)
    {
        var bflShapes = Flux2Specs.Parameters(config).ToDictionary(p => p.Name, p => p.Shape);
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["generator"] = $"inference-server random-checkpoint seed={seed}" };
        if (layout == Flux2Layout.Bfl)
        {
            System.IO.Directory.CreateDirectory(outDir);
            string path = Path.Combine(outDir, fileName);
            SafetensorsWriter.Write(path, Specs(config, layout, dtype), s => Parameter(s.Name, s.Shape, dtype, seed), metadata, bytesWritten);
            return path;
        }

        string dir = Path.Combine(outDir, "transformer");
        System.IO.Directory.CreateDirectory(dir);
        var diff = Flux2Diffusers.Specs(config).ToDictionary(s => s.Name);
        (string Name, Tensor T)? cached = null; // q, k, v of one fused qkv come one after another: draw it once
        Tensor Bfl(string name)
        {
            if (cached is { } c && c.Name == name) return c.T;
            cached?.T.Dispose();
            var t = Parameter(name, bflShapes[name], dtype, seed).DetachFromDisposeScope(); // outlives ToDiffusers' scope
            cached = (name, t);
            return t;
        }
        try
        {
            SafetensorsWriter.WriteSharded(dir, DiffusersBaseName, Specs(config, layout, dtype), s => Flux2Diffusers.ToDiffusers(diff[s.Name], Bfl),
                maxShardBytes, metadata, bytesWritten);
        }
        finally { cached?.T.Dispose(); }
        AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), Flux2Diffusers.DiffusersConfig(config).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return dir;
    }
}
