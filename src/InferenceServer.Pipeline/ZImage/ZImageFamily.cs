using InferenceServer.Models;
using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Generation;

namespace InferenceServer.Pipeline.ZImage;

/// <summary>Z-Image in the family registry: diffusers or single-file folders whose transformer has Z-Image's tensors.</summary>
public sealed class ZImageFamily : IModelFamily
{
    public string Name => ZImageModelCard.Family;
    public bool Recognises(string dir) => ZImageModelFolder.Recognises(dir);
    public IFamilyBackend Load(string dir, ModelLoadOptions options) => new ZImageBackend(ZImageModelFolder.Load(dir, options));
}
