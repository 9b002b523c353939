namespace InferenceServer.Server.Lora;

/// <summary>An adapter file of the folder: its name (the file name without .safetensors), path and size.</summary>
public sealed record LoraFileEntry(string Name, string Path, long Bytes);

/// <summary>
/// The adapter folder (<c>serve --lora-dir</c>): names are file names without <c>.safetensors</c>, directly in the folder.
/// A name from a request is only ever a plain file name (no separator, no "..", no leading dot, nothing a file system
/// would read as a path), so a client cannot reach a file outside the folder.
/// </summary>
public static class LoraFolder
{
    /// <summary>The adapters in <paramref name="directory"/>, by name (ordinal); empty when it is null or missing.</summary>
    public static IReadOnlyList<LoraFileEntry> List(string? directory)
    {
        if (directory is null || !Directory.Exists(directory)) return [];
        return Directory.EnumerateFiles(directory, "*" + LoraSpec.Extension, SearchOption.TopDirectoryOnly)
            .Select(p => new FileInfo(p))
            .Where(f => f.Name.EndsWith(LoraSpec.Extension, StringComparison.Ordinal) && IsPlainName(NameOf(f.Name)))
            .Select(f => new LoraFileEntry(NameOf(f.Name), f.FullName, f.Length))
            .OrderBy(e => e.Name, StringComparer.Ordinal)
            .ToList();
    }

    /// <summary>The file of adapter <paramref name="name"/>, or null when the name is not plain or no such file exists.</summary>
    public static string? PathOf(string directory, string name)
    {
        if (!IsPlainName(name)) return null;
        string path = Path.Combine(Path.GetFullPath(directory), name + LoraSpec.Extension);
        return File.Exists(path) ? path : null;
    }

    /// <summary>True for a name that can only mean a file directly in the folder.</summary>
    public static bool IsPlainName(string name) =>
        name.Length is > 0 and <= 200
        && name[0] != '.'
        && name.IndexOfAny(['/', '\\', ':', '\0']) < 0
        && name.IndexOfAny(Path.GetInvalidFileNameChars()) < 0
        && !name.Any(char.IsControl)
        && name.Trim() == name;

    static string NameOf(string fileName) => fileName[..^LoraSpec.Extension.Length];
}
