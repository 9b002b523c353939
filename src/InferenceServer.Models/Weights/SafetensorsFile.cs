using System.IO.MemoryMappedFiles;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// A memory-mapped safetensors file: <c>u64-LE header length, JSON header, raw little-endian data</c>.
/// Opening reads and validates the header only (no mapping, no handle kept open); the first <see cref="Load"/> maps
/// the file and each load copies just that tensor's bytes, so loading one tensor of an 8 GB file touches a few pages,
/// not the file. Loads may run on several threads at once.
/// </summary>
public sealed class SafetensorsFile : ITensorSource
{
    /// <summary>Headers larger than this are refused (the format's own reference limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    readonly object gate = new();
    readonly Dictionary<string, TensorEntry> byName;
    MemoryMappedFile? map;
    MemoryMappedViewAccessor? view;
    bool disposed;

    /// <summary>Full path of the file.</summary>
    public string Path { get; }
    public IReadOnlyList<TensorEntry> Entries { get; }
    /// <summary>The header's <c>__metadata__</c> strings (empty when it has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public long FileLength { get; }

    SafetensorsFile(string path, long length, List<TensorEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path;
        FileLength = length;
        Entries = entries;
        Metadata = metadata;
        byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
    }

    /// <summary>Opens and validates a file; throws <see cref="InvalidDataException"/> naming the file (and tensor) on any defect.</summary>
    public static SafetensorsFile Open(string path)
    {
        path = System.IO.Path.GetFullPath(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such safetensors file", path);
        var (length, entries, metadata) = ReadHeader(path);
        return new SafetensorsFile(path, length, entries, metadata);
    }

    public bool TryGetEntry(string name, out TensorEntry entry) => byName.TryGetValue(name, out entry!);

    public TensorEntry this[string name] => byName.TryGetValue(name, out var e) ? e
        : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

    public Tensor LoadRaw(string name)
    {
        var e = this[name];
        var t = empty(e.ByteLength, ScalarType.Byte);
        CopyInto(e, t);
        return t;
    }

    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        var e = this[name];
        Tensor result;
        if (e.DType is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2)
        {
            using var codes = empty(e.Shape, ScalarType.Byte);
            CopyInto(e, codes);
            result = Float8.ToFloat32(codes, e.DType);
        }
        else
        {
            result = empty(e.Shape, e.DType.ToScalarType());
            CopyInto(e, result);
        }
        if (dtype is { } d && result.dtype != d) { var c = result.to(d); result.Dispose(); result = c; }
        if (device is not null && result.device != device) { var c = result.to(device); result.Dispose(); result = c; }
        return result;
    }

    MemoryMappedViewAccessor View()
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (view is null)
            {
                map = MemoryMappedFile.CreateFromFile(Path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
                view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                // The file may have changed since its header was read: never read past the mapping.
                if (view.Capacity < FileLength) throw new InvalidDataException($"{Path}: file shrank to {view.Capacity} bytes after opening ({FileLength} expected)");
            }
            return view;
        }
    }

    unsafe void CopyInto(TensorEntry e, Tensor destination)
    {
        if (e.ByteLength == 0) return;
        var mapped = View();
        byte* basePtr = null;
        mapped.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        try
        {
            byte* src = basePtr + mapped.PointerOffset + e.Offset;
            // Tensor.bytes is a span over the tensor's own memory, limited to int length: copy in slices of <= 1 GiB.
            using var flat = destination.flatten();
            long elementSize = e.ByteLength / Math.Max(1, flat.numel());
            long perChunk = Math.Max(1, (1L << 30) / Math.Max(1, elementSize));
            for (long start = 0; start < flat.numel(); start += perChunk)
            {
                long n = Math.Min(perChunk, flat.numel() - start);
                using var part = flat.narrow(0, start, n);
                var dst = part.bytes;
                new ReadOnlySpan<byte>(src + start * elementSize, dst.Length).CopyTo(dst);
            }
        }
        finally
        {
            mapped.SafeMemoryMappedViewHandle.ReleasePointer();
        }
    }

    static (long Length, List<TensorEntry> Entries, Dictionary<string, string> Metadata) ReadHeader(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
        long length = fs.Length;
        if (length < 8) throw new InvalidDataException($"{path}: truncated safetensors file ({length} bytes, the header length alone takes 8)");
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        ulong headerLen = BitConverter.ToUInt64(lenBytes);
        if (headerLen < 2 || headerLen > MaxHeaderBytes)
            throw new InvalidDataException($"{path}: header length {headerLen} is out of range (2..{MaxHeaderBytes} bytes)");
        if (8 + (long)headerLen > length)
            throw new InvalidDataException($"{path}: header length {headerLen} runs past the end of the file ({length} bytes)");
        var header = new byte[headerLen];
        fs.ReadExactly(header);

        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: header is not valid JSON ({e.Message})", e); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: header is not a JSON object");

        long dataStart = 8 + (long)headerLen;
        long dataLength = length - dataStart;
        var entries = new List<TensorEntry>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var prop in doc.RootElement.EnumerateObject())
        {
            if (prop.Name == "__metadata__")
            {
                if (prop.Value.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: __metadata__ must be an object of strings");
                foreach (var m in prop.Value.EnumerateObject())
                {
                    if (m.Value.ValueKind != JsonValueKind.String) throw new InvalidDataException($"{path}: __metadata__.{m.Name} must be a string");
                    metadata[m.Name] = m.Value.GetString()!;
                }
                continue;
            }
            entries.Add(ParseEntry(path, prop, dataStart, dataLength));
        }

        // Offsets are relative to the data section and must tile it without overlap.
        var sorted = entries.OrderBy(e => e.Offset).ThenBy(e => e.ByteLength).ToList();
        for (int i = 1; i < sorted.Count; i++)
        {
            var prev = sorted[i - 1];
            if (sorted[i].Offset < prev.Offset + prev.ByteLength && sorted[i].ByteLength > 0 && prev.ByteLength > 0)
                throw new InvalidDataException($"{path}: tensor '{sorted[i].Name}' overlaps tensor '{prev.Name}'");
        }
        return (length, entries.OrderBy(e => e.Offset).ToList(), metadata);
    }

    static TensorEntry ParseEntry(string path, JsonProperty prop, long dataStart, long dataLength)
    {
        string name = prop.Name;
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: tensor '{name}': entry is not an object");
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw new InvalidDataException($"{path}: tensor '{name}': missing dtype");
        if (!SafetensorsDTypes.TryParse(dt.GetString()!, out var dtype))
            throw new InvalidDataException($"{path}: tensor '{name}': unknown dtype '{dt.GetString()}'");
        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{path}: tensor '{name}': missing shape");
        var shape = new List<long>();
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long n) || n < 0)
                throw new InvalidDataException($"{path}: tensor '{name}': bad shape {sh.GetRawText()}");
            shape.Add(n);
        }
        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new InvalidDataException($"{path}: tensor '{name}': data_offsets must be [begin, end]");
        if (!off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw new InvalidDataException($"{path}: tensor '{name}': bad data_offsets {off.GetRawText()}");
        if (end > dataLength)
            throw new InvalidDataException($"{path}: tensor '{name}': data_offsets {off.GetRawText()} run past the end of the data ({dataLength} bytes; file truncated?)");
        long elements;
        try { elements = shape.Aggregate(1L, (a, b) => checked(a * b)); }
        catch (OverflowException) { throw new InvalidDataException($"{path}: tensor '{name}': shape {sh.GetRawText()} is too large"); }
        long expected = elements * dtype.Size();
        if (end - begin != expected)
            throw new InvalidDataException($"{path}: tensor '{name}': {end - begin} bytes for {dtype} {sh.GetRawText()}, expected {expected}");
        return new TensorEntry(name, dtype, shape.ToArray(), dataStart + begin, end - begin, path);
    }

    public void Dispose()
    {
        lock (gate)
        {
            disposed = true;
            view?.Dispose();
            map?.Dispose();
        }
    }
}
