using Microsoft.Win32.SafeHandles;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// A safetensors file read lazily: <c>u64-LE header length, JSON header, raw little-endian data</c>.
/// Opening reads and validates the header only (the file is opened again at the first load); each <see cref="Load"/> reads just that tensor's
/// bytes with one positional read (pread) straight into the new tensor, so loading one tensor of an 8 GB file reads a
/// few MB and memory grows by that tensor only. Loads may run on several threads at once. Opened with a
/// <see cref="WeightMapping"/> that allows it, tensors can instead be views of a private memory map of the file
/// (<see cref="TryMap"/>): no copy at all, the page cache is the weights' memory.
/// </summary>
public sealed class SafetensorsFile : ITensorSource
{
    /// <summary>Headers larger than this are refused (the format's own reference limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    readonly object gate = new();
    readonly Dictionary<string, TensorEntry> byName;
    readonly Dictionary<ScalarType, Tensor> maps = [];   // under gate: the whole file mapped as each dtype a tensor needs
    SafeFileHandle? handle;
    bool disposed;

    /// <summary>True when tensors may be views of a memory map of this file (<see cref="TryMap"/>; see <see cref="WeightMapping"/>).</summary>
    public bool Mappable { get; }
    readonly bool dropsCopiedPages; // see ReadOptions.DropCopiedPages

    /// <summary>Full path of the file.</summary>
    public string Path { get; }
    public IReadOnlyList<TensorEntry> Entries { get; }
    /// <summary>The header's <c>__metadata__</c> strings (empty when it has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public long FileLength { get; }

    SafetensorsFile(string path, long length, List<TensorEntry> entries, Dictionary<string, string> metadata, bool mappable, bool dropCopiedPages)
    {
        Mappable = mappable;
        dropsCopiedPages = dropCopiedPages;
        Path = path;
        FileLength = length;
        Entries = entries;
        Metadata = metadata;
        byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
    }

    /// <summary>Opens and validates a file; throws <see cref="InvalidDataException"/> naming the file (and tensor) on any defect.</summary>
    /// <param name="read">Whether <see cref="TryMap"/> may map this file, and whether copied pages are dropped from the page cache (default: copies, pages kept).</param>
    public static SafetensorsFile Open(string path, ReadOptions? read = null)
    {
        path = System.IO.Path.GetFullPath(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such safetensors file", path);
        var (length, entries, metadata) = ReadHeader(path);
        read ??= ReadOptions.Default;
        return new SafetensorsFile(path, length, entries, metadata, read.Mapping.Allows(path), read.DropCopiedPages);
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

    /// <summary>Largest piece read at a time when the destination's dtype differs from the stored one (converted piece by piece).</summary>
    const long ConvertChunkBytes = 64L << 20;

    /// <summary>
    /// Reads a tensor into <paramref name="destination"/>. On the CPU, contiguous: the stored bytes go straight into it
    /// (same dtype), or are read in pieces of 64 MB into one scratch tensor and converted into it (another float dtype),
    /// so no whole-tensor copy is ever made. Elsewhere (a GPU, FP8 codes): loaded and copied.
    /// </summary>
    public void ReadInto(string name, Tensor destination) => ReadInto(name, destination, ConvertChunkBytes);

    /// <summary><see cref="ReadInto(string, Tensor)"/> converting in pieces of <paramref name="chunkBytes"/> (tests use small ones).</summary>
    internal void ReadInto(string name, Tensor destination, long chunkBytes)
    {
        var e = this[name];
        if (!destination.shape.SequenceEqual(e.Shape))
            throw new ArgumentException($"{Path}: tensor '{name}' is [{string.Join(", ", e.Shape)}], the destination [{string.Join(", ", destination.shape)}]", nameof(destination));
        bool direct = destination.device_type == DeviceType.CPU && destination.is_contiguous() && e.DType is not (SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2);
        var stored = direct ? e.DType.ToScalarType() : default;
        if (direct && stored == destination.dtype) { CopyInto(e, destination); return; }
        if (direct && destination.is_floating_point() && e.ByteLength > 0)
        {
            using var flat = destination.view(-1);
            long size = e.DType.Size(), perChunk = Math.Max(1, chunkBytes / size);
            using var scratch = empty(Math.Min(perChunk, flat.numel()), stored);
            using var noGrad = no_grad();
            for (long start = 0; start < flat.numel(); start += perChunk)
            {
                long n = Math.Min(perChunk, flat.numel() - start);
                using var piece = scratch.narrow(0, 0, n);
                CopyInto(e with { Offset = e.Offset + start * size, ByteLength = n * size }, piece);
                using var target = flat.narrow(0, start, n);
                target.copy_(piece);
            }
            return;
        }
        ITensorSource.LoadAndCopy(this, name, destination);
    }

    public bool ConcurrentReads => true;

    /// <summary>
    /// A view of the tensor in a private (copy-on-write) memory map of this file, when <see cref="Mappable"/>, the dtype is
    /// not FP8 and the bytes are aligned for it. Mapped through the descriptor this object already holds
    /// (/proc/self/fd), so the map is of the file whose header was checked even if the path now names another.
    /// </summary>
    public bool TryMap(string name, out Tensor mapped)
    {
        mapped = null!;
        var e = this[name];
        if (!Mappable || e.ByteLength == 0 || e.DType is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 || !OperatingSystem.IsLinux()) return false;
        long size = e.DType.Size();
        if (e.Offset % size != 0) return false;
        var dtype = e.DType.ToScalarType();
        Tensor whole;
        lock (gate)
        {
            if (!maps.TryGetValue(dtype, out whole!))
                maps[dtype] = whole = from_file($"/proc/self/fd/{Handle().DangerousGetHandle()}", shared: false, size: FileLength / size, dtype: dtype);
        }
        using var flat = whole.narrow(0, e.Offset / size, e.ElementCount);
        mapped = flat.view(e.Shape);
        return true;
    }

    SafeFileHandle Handle()
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            return handle ??= File.OpenHandle(Path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        }
    }

    /// <summary>Reads the tensor's bytes straight into <paramref name="destination"/> (contiguous, of the right size).</summary>
    void CopyInto(TensorEntry e, Tensor destination)
    {
        if (e.ByteLength == 0) return;
        var h = Handle();
        // Tensor.bytes is a span over the tensor's own memory, limited to int length: read in slices of <= 1 GiB.
        using var flat = destination.flatten();
        long elementSize = e.ByteLength / Math.Max(1, flat.numel());
        long perChunk = Math.Max(1, (1L << 30) / Math.Max(1, elementSize));
        for (long start = 0; start < flat.numel(); start += perChunk)
        {
            using var part = flat.narrow(0, start, Math.Min(perChunk, flat.numel() - start));
            var dst = part.bytes;
            long offset = e.Offset + start * elementSize;
            for (int done = 0; done < dst.Length;)
            {
                int n = RandomAccess.Read(h, dst[done..], offset + done);
                if (n == 0) throw new InvalidDataException($"{Path}: tensor '{e.Name}': the file ends at byte {offset + done}, before the tensor does (truncated after opening?)");
                done += n;
            }
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
            foreach (var m in maps.Values) m.Dispose(); // views handed out keep the mapping alive
            maps.Clear();
            // The whole file at once, when the load is done with it (per tensor, the calls slowed the concurrent reads).
            if (dropsCopiedPages && handle is not null && !Mappable) PageCache.Drop(handle, 0, 0);
            handle?.Dispose();
        }
    }
}
