using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Lora;
using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Generation;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Lora;

/// <summary>Tiny random FLUX.2 and Z-Image folders (float32 files) and random adapters A and B for each, written once per test class.</summary>
public sealed class LoraModels : IDisposable
{
    public string Root { get; } = Directory.CreateTempSubdirectory("lora-models-").FullName;
    public static readonly string[] Families = ["flux2", "zimage"];

    public LoraModels()
    {
        Flux2RandomModel.Write(ModelCards.Load("flux2-tiny"), Flux2Layout.Bfl, Folder("flux2"), ScalarType.Float32, 11);
        ZImageRandomModel.Write(ZImageModelCard.Load("zimage-tiny"), Folder("zimage"), ScalarType.Float32, seed: 5);
        foreach (var family in Families)
        {
            using var backend = ModelFamilies.Load(Folder(family), new ModelLoadOptions(ScalarType.Float32));
            var targets = backend.Lora.Targets;
            Write(targets, family, "A", rank: 4, seed: 1);
            Write(targets, family, "B", rank: 8, seed: 2, attentionOnly: true);
        }
    }

    void Write(LoraTargets targets, string family, string name, int rank, long seed, bool attentionOnly = false)
    {
        var layers = LoraWriter.Random(targets, rank, seed, attentionOnly);
        foreach (var format in Enum.GetValues<LoraFileFormat>())
            LoraWriter.Write(Adapter(family, name, format), targets, layers, format);
        foreach (var (_, d, u) in layers) { d.Dispose(); u.Dispose(); }
    }

    public string Folder(string family) => Path.Combine(Root, family);

    /// <summary>Adapter <paramref name="name"/> of <paramref name="family"/>, written as <paramref name="format"/> (bf16 file).</summary>
    public string Adapter(string family, string name, LoraFileFormat format = LoraFileFormat.Bfl) =>
        Path.Combine(Root, $"{family}-{name}-{format.ToString().ToLowerInvariant()}.safetensors");

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
