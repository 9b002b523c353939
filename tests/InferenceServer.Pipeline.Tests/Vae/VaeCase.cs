using System.Text.Json;
using System.Text.Json.Nodes;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Tests.Vae;

/// <summary>One flux2-vae-* fixture folder: case.json (config, tensors, tolerances), io.safetensors and weights.safetensors.</summary>
sealed class VaeCase : IDisposable
{
    public string Name { get; }
    public JsonElement Json { get; }
    public SafetensorsFile Io { get; }
    public SafetensorsFile Weights { get; }
    public AutoEncoderConfig Config { get; }

    VaeCase(string name)
    {
        Name = name;
        string dir = Fixtures.CaseDir(name);
        Json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json"))).RootElement.Clone();
        var files = Json.GetProperty("files");
        Io = SafetensorsFile.Open(Path.Combine(dir, files.GetProperty("io").GetString()!));
        Weights = SafetensorsFile.Open(Path.Combine(dir, files.GetProperty("weights").GetString()!));
        Config = ConfigOf(Json.GetProperty("config"));
    }

    public static VaeCase Open(string name) => new(name);

    /// <summary>The case's AutoEncoderParams plus its GroupNorm / BatchNorm / patch constants, as a card.</summary>
    static AutoEncoderConfig ConfigOf(JsonElement config)
    {
        var card = JsonNode.Parse(config.GetProperty("AutoEncoderParams").GetRawText())!.AsObject();
        foreach (var key in new[] { "groupnorm_groups", "groupnorm_eps", "bn_eps", "bn_momentum", "ps" })
            card[key] = JsonNode.Parse(config.GetProperty(key).GetRawText());
        Assert.Equal("float32", config.GetProperty("dtype").GetString());
        return AutoEncoderConfig.FromJson(card.ToJsonString());
    }

    /// <summary>Names of every tensor case.json lists.</summary>
    public IReadOnlyList<string> TensorNames => Json.GetProperty("tensors").EnumerateObject().Select(p => p.Name).ToList();

    public bool Has(string tensor) => Io.TryGetEntry(tensor, out _);

    public Tensor Load(string tensor) => Io.Load(tensor);

    /// <summary>case.json's atol/rtol; a tensor without an entry is pure data movement (e.g. the decode cases' scattered
    /// <c>tokens</c>) and must be bit-exact.</summary>
    public (double Atol, double Rtol) Tolerance(string tensor)
    {
        if (!Json.GetProperty("tolerances").TryGetProperty(tensor, out var t)) return (0, 0);
        return (t.GetProperty("atol").GetDouble(), t.GetProperty("rtol").GetDouble());
    }

    public JsonElement ToleranceEntry(string tensor) => Json.GetProperty("tolerances").GetProperty(tensor);

    /// <summary>The model with the case's weights. The file may hold only encoder.* or decoder.* (plus bn.*): every key it has must be used.</summary>
    public Flux2Autoencoder Model(ScalarType dtype = ScalarType.Float32)
    {
        var ae = new Flux2Autoencoder(Config);
        var report = ae.LoadWeights(Weights, strict: false);
        Assert.Empty(report.Unexpected);
        Assert.Empty(report.Mismatched);
        var held = Weights.Entries.Select(e => e.Name.Split('.')[0]).ToHashSet();
        Assert.All(report.Missing, k => Assert.DoesNotContain(k.Split('.')[0], held));
        if (dtype != ScalarType.Float32) ae.To(dtype);
        return ae;
    }

    public void Dispose()
    {
        Io.Dispose();
        Weights.Dispose();
    }
}
