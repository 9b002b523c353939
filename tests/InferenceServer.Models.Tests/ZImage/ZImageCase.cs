using System.Text.Json;
using InferenceServer.Models.Weights;
using InferenceServer.Models.ZImage;
using InferenceServer.Tests.Shared;
using static TorchSharp.torch;

namespace InferenceServer.Tests.ZImage;

/// <summary>One Z-Image DiT fixture case folder: case.json, io.safetensors, weights.safetensors.</summary>
public sealed class ZImageCase : IDisposable
{
    public string Name { get; }
    public string Dir { get; }
    public JsonElement Json { get; }
    readonly JsonDocument doc;
    public SafetensorsFile Io { get; }

    public ZImageCase(string name)
    {
        Name = name;
        Dir = Fixtures.CaseDir(name);
        doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "case.json")));
        Json = doc.RootElement;
        Io = SafetensorsFile.Open(Path.Combine(Dir, "io.safetensors"));
    }

    public string WeightsPath => Path.Combine(Dir, Json.GetProperty("weights").GetProperty("file").GetString()!);
    public bool Has(string tensor) => Io.TryGetEntry(tensor, out _);
    public Tensor T(string tensor) => Io.Load(tensor);
    public double Atol => Json.GetProperty("tolerance").GetProperty("atol").GetDouble();
    public double Rtol => Json.GetProperty("tolerance").GetProperty("rtol").GetDouble();
    public double AtolStrict => Json.GetProperty("tolerance").GetProperty("atol_strict").GetDouble();
    public int Batch => Json.GetProperty("shapes").GetProperty("batch").GetInt32();
    public IEnumerable<string> Section(string key) =>
        Json.TryGetProperty(key, out var s) && s.ValueKind == JsonValueKind.Object ? s.EnumerateObject().Select(p => p.Name) : [];

    /// <summary>The config as the user's loader infers it from the weights (no config.json in a fixture).</summary>
    public ZImageConfig Config()
    {
        using var w = SafetensorsFile.Open(WeightsPath);
        return ZImageConfig.FromTensors(w);
    }

    /// <summary>The case's model through <see cref="ZImageTransformer.Load"/> (strict).</summary>
    public ZImageTransformer LoadModel(ScalarType dtype = ScalarType.Float32)
    {
        using var w = SafetensorsFile.Open(WeightsPath);
        return ZImageTransformer.Load(w, ZImageConfig.FromTensors(w), dtype);
    }

    /// <summary>Caption features of every sample (<c>cap_feats.b</c>).</summary>
    public List<Tensor> Captions() => Enumerable.Range(0, Batch).Select(b => T($"cap_feats.{b}")).ToList();

    public void Dispose() { Io.Dispose(); doc.Dispose(); }
}
