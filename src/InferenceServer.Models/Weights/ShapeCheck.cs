namespace InferenceServer.Models.Weights;

/// <summary>
/// Compares the tensor shapes a config expects with a checkpoint's headers, before any module is built: a folder marked
/// for the wrong model card is refused in milliseconds instead of after allocating the card's whole model (klein-4B: 7.7 GB).
/// </summary>
public static class ShapeCheck
{
    /// <summary>
    /// The first difference in words (a missing tensor, another shape, a tensor the config does not have), or null when
    /// <paramref name="source"/> holds exactly <paramref name="expected"/>. Tensors <paramref name="ignoreExtra"/> accepts
    /// (e.g. 8-bit scales) may be there in addition.
    /// </summary>
    public static string? FirstDifference(ITensorSource source, IEnumerable<(string Name, long[] Shape)> expected, Func<string, bool>? ignoreExtra = null)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, shape) in expected)
        {
            names.Add(name);
            if (!source.TryGetEntry(name, out var entry)) return $"tensor '{name}' {Text(shape)} is missing";
            if (!entry.Shape.SequenceEqual(shape)) return $"tensor '{name}' should be {Text(shape)} but is {entry.ShapeText}";
        }
        var extra = source.Entries.FirstOrDefault(e => !names.Contains(e.Name) && ignoreExtra?.Invoke(e.Name) != true);
        return extra is null ? null : $"tensor '{extra.Name}' {extra.ShapeText} is not one of its tensors";
    }

    static string Text(long[] shape) => "[" + string.Join(", ", shape) + "]";
}
