namespace InferenceServer.Models.Weights;

/// <summary>Opens whatever a user points at as a checkpoint: a safetensors file, a sharded index or a folder.</summary>
public static class Checkpoint
{
    /// <summary>The suffix of a sharded checkpoint's index file.</summary>
    public const string IndexSuffix = ".safetensors.index.json";

    /// <summary>
    /// Opens <paramref name="path"/>: a <c>.safetensors</c> file; a <c>*.safetensors.index.json</c>; or a folder
    /// holding one index (used), else every <c>*.safetensors</c> file in it merged (a name in two files is an error).
    /// Throws <see cref="FileNotFoundException"/> or <see cref="InvalidDataException"/> naming the path at fault.
    /// <paramref name="read"/>: whether its tensors may be memory maps of the files, and what happens to copied pages (default: copies).
    /// </summary>
    public static ITensorSource Open(string path, ReadOptions? read = null)
    {
        path = Path.GetFullPath(path);
        if (File.Exists(path))
            return path.EndsWith(IndexSuffix, StringComparison.Ordinal) || path.EndsWith(".index.json", StringComparison.Ordinal)
                ? ShardedSafetensors.Open(path, read)
                : SafetensorsFile.Open(path, read);
        if (!Directory.Exists(path)) throw new FileNotFoundException($"{path}: no such file or folder", path);

        var indexes = Directory.GetFiles(path, "*" + IndexSuffix).Order(StringComparer.Ordinal).ToArray();
        if (indexes.Length > 1)
            throw new InvalidDataException($"{path}: several checkpoint indexes ({string.Join(", ", indexes.Select(Path.GetFileName))}); name one");
        if (indexes.Length == 1) return ShardedSafetensors.Open(indexes[0], read);
        var files = Directory.GetFiles(path, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        return files.Length switch
        {
            0 => throw new FileNotFoundException($"{path}: no *.safetensors file or {IndexSuffix} in this folder", path),
            1 => SafetensorsFile.Open(files[0], read),
            _ => ShardedSafetensors.Merge(path, files, read),
        };
    }

    /// <summary>Bytes of the safetensors files of a checkpoint: a file's length, or every <c>*.safetensors</c> in a folder (recursively); 0 when missing.</summary>
    public static long FileBytes(string path) =>
        File.Exists(path) ? new FileInfo(path).Length
        : Directory.Exists(path) ? Directory.EnumerateFiles(path, "*.safetensors", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length) : 0;

    /// <summary>
    /// Every checkpoint under a folder, recursively: each index file, and each <c>.safetensors</c> file no index
    /// there maps. Sorted by path. A file path is returned as it is.
    /// </summary>
    public static IReadOnlyList<string> Discover(string path)
    {
        path = Path.GetFullPath(path);
        if (File.Exists(path)) return [path];
        if (!Directory.Exists(path)) throw new FileNotFoundException($"{path}: no such file or folder", path);
        var found = new List<string>();
        foreach (var dir in Directory.EnumerateDirectories(path, "*", SearchOption.AllDirectories).Prepend(path))
        {
            var indexes = Directory.GetFiles(dir, "*" + IndexSuffix);
            var sharded = new HashSet<string>(StringComparer.Ordinal);
            foreach (var index in indexes)
            {
                found.Add(index);
                foreach (var f in ShardFiles(index)) sharded.Add(Path.GetFullPath(Path.Combine(dir, f)));
            }
            found.AddRange(Directory.GetFiles(dir, "*.safetensors").Where(f => !sharded.Contains(f)));
        }
        return found.Order(StringComparer.Ordinal).ToList();
    }

    /// <summary>The file names an index maps to; none when it cannot be read (opening it reports why).</summary>
    static IEnumerable<string> ShardFiles(string index)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(index));
            if (doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object && doc.RootElement.TryGetProperty("weight_map", out var wm)
                && wm.ValueKind == System.Text.Json.JsonValueKind.Object)
                return wm.EnumerateObject().Select(p => p.Value.ToString()).Distinct().ToList();
        }
        catch (System.Text.Json.JsonException) { }
        return [];
    }

    /// <summary><paramref name="path"/> when the file (or folder) exists; else a <see cref="FileNotFoundException"/> naming what the model folder lacks.</summary>
    public static string Require(string path, bool folder)
    {
        if (folder ? Directory.Exists(path) : File.Exists(path)) return path;
        throw new FileNotFoundException($"model folder is missing {(folder ? "the folder" : "the file")} {path}", path);
    }
}
