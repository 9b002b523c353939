using System.Text.Json;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// A checkpoint spread over several safetensors files: a Hugging Face <c>*.safetensors.index.json</c>
/// (<c>{"metadata":{...},"weight_map":{name:file}}</c>), or a set of files merged by <see cref="Merge"/>.
/// Opening reads every file's header and checks that each mapped tensor is where the map says; files are
/// mapped only when a tensor of theirs is loaded.
/// </summary>
public sealed class ShardedSafetensors : ITensorSource
{
    readonly Dictionary<string, (TensorEntry Entry, SafetensorsFile File)> byName;

    /// <summary>The index file, or the folder the files were merged from.</summary>
    public string Path { get; }
    /// <summary>The shard files, in order.</summary>
    public IReadOnlyList<SafetensorsFile> Files { get; }
    public IReadOnlyList<TensorEntry> Entries { get; }
    /// <summary>The index's <c>metadata</c> (values as JSON text, e.g. <c>total_size</c>); empty for merged files.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    ShardedSafetensors(string path, List<SafetensorsFile> files, Dictionary<string, (TensorEntry, SafetensorsFile)> map, Dictionary<string, string> metadata)
    {
        Path = path;
        Files = files;
        byName = map;
        Metadata = metadata;
        var order = files.Select((f, i) => (f, i)).ToDictionary(x => x.f, x => x.i);
        Entries = map.Values.OrderBy(v => order[v.Item2]).ThenBy(v => v.Item1.Offset).Select(v => v.Item1).ToList();
    }

    /// <summary>Opens an index; throws <see cref="FileNotFoundException"/> or <see cref="InvalidDataException"/> naming the file and tensor at fault.</summary>
    public static ShardedSafetensors Open(string indexPath, ReadOptions? read = null)
    {
        indexPath = System.IO.Path.GetFullPath(indexPath);
        if (!File.Exists(indexPath)) throw new FileNotFoundException($"{indexPath}: no such index file", indexPath);
        string dir = System.IO.Path.GetDirectoryName(indexPath)!;

        var weightMap = new List<(string Tensor, string File)>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: not a safetensors index (no \"weight_map\" object)");
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(p.Value.GetString()))
                    throw new InvalidDataException($"{indexPath}: tensor '{p.Name}': the file name must be a string");
                weightMap.Add((p.Name, p.Value.GetString()!));
            }
            if (root.TryGetProperty("metadata", out var md) && md.ValueKind == JsonValueKind.Object)
                foreach (var p in md.EnumerateObject())
                    metadata[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : p.Value.GetRawText();
        }
        catch (JsonException e) { throw new InvalidDataException($"{indexPath}: index is not valid JSON ({e.Message})", e); }

        var files = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        var ordered = new List<SafetensorsFile>();
        var map = new Dictionary<string, (TensorEntry, SafetensorsFile)>(StringComparer.Ordinal);
        try
        {
            foreach (var (tensor, file) in weightMap)
            {
                if (!files.TryGetValue(file, out var f))
                {
                    string full = System.IO.Path.GetFullPath(System.IO.Path.Combine(dir, file));
                    if (!File.Exists(full)) throw new FileNotFoundException($"{indexPath}: tensor '{tensor}' is mapped to {full}, which does not exist", full);
                    files[file] = f = SafetensorsFile.Open(full, read);
                    ordered.Add(f);
                }
                if (!f.TryGetEntry(tensor, out var entry))
                    throw new InvalidDataException($"{indexPath}: tensor '{tensor}' is mapped to {f.Path}, which does not hold it");
                map[tensor] = (entry, f);
            }
        }
        catch
        {
            foreach (var f in ordered) f.Dispose();
            throw;
        }
        return new ShardedSafetensors(indexPath, ordered, map, metadata);
    }

    /// <summary>
    /// Merges several safetensors files into one source (a folder of files without an index). A tensor name found
    /// in two files is an <see cref="InvalidDataException"/> naming both.
    /// </summary>
    public static ShardedSafetensors Merge(string description, IEnumerable<string> paths, ReadOptions? read = null)
    {
        var files = new List<SafetensorsFile>();
        var map = new Dictionary<string, (TensorEntry, SafetensorsFile)>(StringComparer.Ordinal);
        try
        {
            foreach (var p in paths)
            {
                var f = SafetensorsFile.Open(p, read);
                files.Add(f);
                foreach (var e in f.Entries)
                    if (!map.TryAdd(e.Name, (e, f)))
                        throw new InvalidDataException($"{description}: tensor '{e.Name}' is in both {map[e.Name].Item2.Path} and {f.Path}");
            }
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
        return new ShardedSafetensors(System.IO.Path.GetFullPath(description), files, map, []);
    }

    public bool TryGetEntry(string name, out TensorEntry entry)
    {
        bool found = byName.TryGetValue(name, out var v);
        entry = v.Entry;
        return found;
    }

    (TensorEntry Entry, SafetensorsFile File) Find(string name) => byName.TryGetValue(name, out var v) ? v
        : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null) => Find(name).File.Load(name, dtype, device);

    public Tensor LoadRaw(string name) => Find(name).File.LoadRaw(name);

    public void ReadInto(string name, Tensor destination) => Find(name).File.ReadInto(name, destination);

    public bool TryMap(string name, out Tensor mapped) => Find(name).File.TryMap(name, out mapped);

    public bool ConcurrentReads => true;

    public void Dispose()
    {
        foreach (var f in Files) f.Dispose();
    }
}
