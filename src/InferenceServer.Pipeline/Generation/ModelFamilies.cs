using InferenceServer.Models;
using InferenceServer.Pipeline.Flux2;

namespace InferenceServer.Pipeline.Generation;

/// <summary>One model family: recognises its folders and loads them as a pipeline backend.</summary>
public interface IModelFamily
{
    /// <summary>The registry name, as model cards spell it in their <c>"family"</c> key.</summary>
    string Name { get; }
    /// <summary>True when the folder's tensors (names and shapes, read from headers) are this family's: the fallback when no card names the family.</summary>
    bool Recognises(string dir);
    /// <summary>Loads every component of the folder.</summary>
    IFamilyBackend Load(string dir, ModelLoadOptions options);
}

/// <summary>
/// The registry of model families: one line per family. A folder's family is (1) the <c>"family"</c> key of the model card
/// its <c>inference-server.json</c> names, else (2) the first family whose tensor shapes it holds.
/// </summary>
public static class ModelFamilies
{
    public static IReadOnlyList<IModelFamily> All { get; } =
    [
        new Flux2Family(),
        new ZImage.ZImageFamily(),
    ];

    public static IModelFamily Get(string name) =>
        All.FirstOrDefault(f => f.Name == name) ?? throw new ArgumentException($"no model family '{name}' (have: {string.Join(", ", All.Select(f => f.Name))})", nameof(name));

    /// <summary>The family of a model folder (see the class summary).</summary>
    public static IModelFamily Detect(string dir)
    {
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: no such model folder");
        if (ModelCards.MarkedCard(dir) is { } card) return Get(ModelCards.FamilyOf(card));
        return All.FirstOrDefault(f => f.Recognises(dir))
            ?? throw new InvalidDataException($"{dir}: not a model folder of any known family ({string.Join(", ", All.Select(f => f.Name))}); the transformer's tensors match none");
    }

    /// <summary>Detects the family and loads the folder.</summary>
    public static IFamilyBackend Load(string dir, ModelLoadOptions options) => Detect(dir).Load(Path.GetFullPath(dir), options);
}
