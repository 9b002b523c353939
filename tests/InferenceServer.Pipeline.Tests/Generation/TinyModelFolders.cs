using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Generation;

/// <summary>Tiny random model folders, BFL and diffusers layout, written once by the code under test (FP32 weights for speed).</summary>
public sealed class TinyModelFolders : IDisposable
{
    public const long Seed = 11;
    public string Root { get; } = Directory.CreateTempSubdirectory("pipeline-models-").FullName;
    public string Bfl => Path.Combine(Root, "bfl");
    public string Diffusers => Path.Combine(Root, "diffusers");
    readonly Lazy<Flux2Model> bflModel;
    readonly Lazy<Flux2Model> diffusersModel;

    public TinyModelFolders()
    {
        var card = ModelCards.Load("flux2-tiny");
        Flux2RandomModel.Write(card, Flux2Layout.Bfl, Bfl, ScalarType.Float32, Seed);
        Flux2RandomModel.Write(card, Flux2Layout.Diffusers, Diffusers, ScalarType.Float32, Seed);
        bflModel = new(() => Flux2ModelFolder.Load(Bfl, ScalarType.Float32));
        diffusersModel = new(() => Flux2ModelFolder.Load(Diffusers, ScalarType.Float32));
    }

    /// <summary>The loaded BFL folder (shared by the tests of a class; do not dispose).</summary>
    public Flux2Model BflModel => bflModel.Value;
    public Flux2Model DiffusersModel => diffusersModel.Value;

    public void Dispose()
    {
        if (bflModel.IsValueCreated) bflModel.Value.Dispose();
        if (diffusersModel.IsValueCreated) diffusersModel.Value.Dispose();
        Directory.Delete(Root, recursive: true);
    }
}
