using System.Text.Encodings.Web;
using InferenceServer.Models.Files;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// Writes safetensors files: <c>u64-LE header length, JSON header padded with spaces to a multiple of 8, data</c>.
/// The header is built from the specs before any data, so the streaming overloads hold one tensor at a time:
/// each is produced, converted to its spec's dtype, written and disposed. Files appear under their name only
/// once complete (<see cref="AtomicFile"/>: a temporary in the same folder, renamed when complete).
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>Writes tensors the caller owns (they are not disposed), each with its own dtype.</summary>
    public static void Write(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var specs = list.Select(t => TensorSpec.Of(t.Name, t.Tensor)).ToList();
        CheckNames(specs, path);
        var byName = list.ToDictionary(t => t.Name, t => t.Tensor, StringComparer.Ordinal);
        WriteFile(path, specs, s => byName[s.Name], disposeProduced: false, metadata, null, 0);
    }

    /// <summary>
    /// Streams tensors into one file: <paramref name="produce"/> is called once per spec, in order; the tensor it
    /// returns must have the spec's shape, is converted to the spec's dtype (for FP8: uint8 codes as they are, a
    /// floating-point tensor is encoded with <see cref="Float8.Encode(Tensor, SafetensorsDType)"/>) and is disposed
    /// once written. <paramref name="bytesWritten"/> receives the running count of data bytes.
    /// </summary>
    public static void Write(string path, IReadOnlyList<TensorSpec> specs, Func<TensorSpec, Tensor> produce,
        IReadOnlyDictionary<string, string>? metadata = null, IProgress<long>? bytesWritten = null) =>
        WriteFile(path, specs, produce, disposeProduced: true, metadata, bytesWritten, 0);

    /// <summary>
    /// Streams tensors into shards of at most <paramref name="maxShardBytes"/> data bytes each (a larger tensor gets
    /// a shard of its own), named <c>baseName-00001-of-0000N.safetensors</c>, plus <c>baseName.safetensors.index.json</c>
    /// in the Hugging Face layout <c>{"metadata":{"total_size":N},"weight_map":{name:file}}</c>.
    /// <paramref name="metadata"/> goes into every shard's header.
    /// </summary>
    public static void WriteSharded(string directory, string baseName, IReadOnlyList<TensorSpec> specs, Func<TensorSpec, Tensor> produce,
        long maxShardBytes, IReadOnlyDictionary<string, string>? metadata = null, IProgress<long>? bytesWritten = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        CheckNames(specs, baseName);
        var shards = new List<List<TensorSpec>>();
        long current = 0;
        foreach (var s in specs)
        {
            if (shards.Count == 0 || (current > 0 && current + s.ByteLength > maxShardBytes)) { shards.Add([]); current = 0; }
            shards[^1].Add(s);
            current += s.ByteLength;
        }
        if (shards.Count == 0) shards.Add([]);

        Directory.CreateDirectory(directory);
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        long done = 0;
        for (int i = 0; i < shards.Count; i++)
        {
            string file = $"{baseName}-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            done = WriteFile(Path.Combine(directory, file), shards[i], produce, disposeProduced: true, metadata, bytesWritten, done);
            foreach (var s in shards[i]) weightMap[s.Name] = file;
        }

        string indexPath = Path.Combine(directory, baseName + ".safetensors.index.json");
        AtomicFile.Write(indexPath, fs =>
        {
            using var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true });
            w.WriteStartObject();
            w.WriteStartObject("metadata");
            w.WriteNumber("total_size", specs.Sum(s => s.ByteLength));
            w.WriteEndObject();
            w.WriteStartObject("weight_map");
            foreach (var s in specs) w.WriteString(s.Name, weightMap[s.Name]);
            w.WriteEndObject();
            w.WriteEndObject();
        });
    }

    /// <summary>
    /// The header bytes (after the u64 length prefix, padding included) of a file of these specs, with data offsets in
    /// spec order from 0: for tools that lay the data out themselves (e.g. sparse benchmark files).
    /// </summary>
    public static byte[] Header(IReadOnlyList<TensorSpec> specs, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        // Non-ASCII names and metadata stay UTF-8 (as serde_json, the reference, writes them), not \uXXXX escapes.
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            long offset = 0;
            foreach (var s in specs)
            {
                w.WriteStartObject(s.Name);
                w.WriteString("dtype", s.DType.ToString());
                w.WriteStartArray("shape");
                foreach (var d in s.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset += s.ByteLength);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            if (metadata is { Count: > 0 }) // last, as the reference writer places it
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        while (ms.Length % 8 != 0) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }

    static long WriteFile(string path, IReadOnlyList<TensorSpec> specs, Func<TensorSpec, Tensor> produce, bool disposeProduced,
        IReadOnlyDictionary<string, string>? metadata, IProgress<long>? progress, long done)
    {
        CheckNames(specs, path);
        var header = Header(specs, metadata);
        AtomicFile.Write(path, fs =>
        {
            fs.Write(BitConverter.GetBytes((ulong)header.Length));
            fs.Write(header);
            foreach (var spec in specs)
            {
                using var scope = NewDisposeScope();
                var produced = produce(spec);
                try { WriteData(fs, path, spec, produced); }
                finally { if (disposeProduced) produced.Dispose(); }
                done += spec.ByteLength;
                progress?.Report(done);
            }
        });
        return done;
    }

    static void WriteData(Stream fs, string path, TensorSpec spec, Tensor t)
    {
        if (!t.shape.SequenceEqual(spec.Shape))
            throw new ArgumentException($"{path}: tensor '{spec.Name}' has shape [{string.Join(", ", t.shape)}], its spec says {spec.ShapeText}");
        Tensor data;
        if (spec.DType is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2)
            data = t.dtype == ScalarType.Byte ? t
                : t.is_floating_point() ? Float8.Encode(t, spec.DType)
                : throw new ArgumentException($"{path}: tensor '{spec.Name}' is {t.dtype}; {spec.DType} takes uint8 codes or floating-point values");
        else
            data = t.dtype == spec.DType.ToScalarType() ? t : t.to(spec.DType.ToScalarType());
        if (data.device_type != DeviceType.CPU) data = data.cpu();
        data = data.contiguous().view(-1); // inside the caller's dispose scope: temporaries go with it

        // Tensor.bytes is an int-sized span: write in slices of at most 1 GiB.
        long elementSize = spec.DType.Size();
        long perChunk = (1L << 30) / elementSize;
        for (long start = 0; start < data.numel(); start += perChunk)
        {
            using var part = data.narrow(0, start, Math.Min(perChunk, data.numel() - start));
            fs.Write(part.bytes);
        }
    }

    static void CheckNames(IReadOnlyList<TensorSpec> specs, string where)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in specs)
        {
            if (string.IsNullOrEmpty(s.Name) || s.Name == "__metadata__") throw new ArgumentException($"{where}: invalid tensor name '{s.Name}'");
            if (!seen.Add(s.Name)) throw new ArgumentException($"{where}: tensor '{s.Name}' appears twice");
            if (s.Shape.Any(d => d < 0)) throw new ArgumentException($"{where}: tensor '{s.Name}' has a negative dimension {s.ShapeText}");
        }
    }
}
