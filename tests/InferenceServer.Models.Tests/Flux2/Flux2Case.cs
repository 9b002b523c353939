using System.Text.Json;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Flux2;

/// <summary>One FLUX.2 fixture case folder: case.json, io.safetensors, weights.safetensors (all optional but case.json).</summary>
public sealed class Flux2Case : IDisposable
{
    public string Name { get; }
    public string Dir { get; }
    public JsonElement Json { get; }
    readonly JsonDocument doc;
    readonly SafetensorsFile? io;

    public Flux2Case(string name)
    {
        Name = name;
        Dir = Fixtures.CaseDir(name);
        doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "case.json")));
        Json = doc.RootElement;
        var ioPath = Path.Combine(Dir, "io.safetensors");
        if (File.Exists(ioPath)) io = SafetensorsFile.Open(ioPath);
    }

    public SafetensorsFile Io => io ?? throw new InvalidOperationException($"{Name}: no io.safetensors");
    public bool Has(string tensor) => io is not null && io.TryGetEntry(tensor, out _);
    /// <summary>A tensor of io.safetensors (stored dtype).</summary>
    public Tensor T(string tensor) => Io.Load(tensor);
    public Flux2Config Config => Flux2Config.FromJson(Json.GetProperty("config"));
    public double Atol => Json.GetProperty("tolerance").GetProperty("atol").GetDouble();
    public double Rtol => Json.GetProperty("tolerance").GetProperty("rtol").GetDouble();
    public double? AtolStrict => Json.GetProperty("tolerance").TryGetProperty("atol_strict", out var a) ? a.GetDouble() : null;
    public int Shape(string key) => Json.GetProperty("shapes").GetProperty(key).GetInt32();
    public IEnumerable<string> Section(string key) =>
        Json.TryGetProperty(key, out var s) && s.ValueKind == JsonValueKind.Object ? s.EnumerateObject().Select(p => p.Name) : [];

    /// <summary>The case's model with weights.safetensors loaded strictly (float32 unless <paramref name="dtype"/>).</summary>
    public Flux2Transformer LoadModel(ScalarType dtype = ScalarType.Float32)
    {
        var model = new Flux2Transformer(Config);
        model.to(dtype);
        using var w = SafetensorsFile.Open(Path.Combine(Dir, Json.GetProperty("weights").GetProperty("file").GetString()!));
        Flux2Checkpoint.Load(model, w);
        return model;
    }

    public void Dispose() { io?.Dispose(); doc.Dispose(); }
}
