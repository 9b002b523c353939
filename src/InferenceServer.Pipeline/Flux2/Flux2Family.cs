using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Generation;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>FLUX.2 in the family registry: BFL or diffusers folders whose transformer matches a flux2 card.</summary>
public sealed class Flux2Family : IModelFamily
{
    public string Name => Flux2Backend.FamilyName;

    public bool Recognises(string dir)
    {
        try { Flux2ModelFolder.DetectCard(dir); return true; }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or DirectoryNotFoundException) { return false; }
    }

    public IFamilyBackend Load(string dir, ModelLoadOptions options) =>
        new Flux2Backend(Flux2ModelFolder.Load(dir, options));
}
