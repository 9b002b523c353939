using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;

namespace InferenceServer.Reliability;

/// <summary>
/// Ways a model folder can be broken on disk, each applied to a fresh copy of a good folder. The transformer, VAE and
/// text-encoder files are found by name pattern so the list works on any FLUX.2 BFL-layout folder.
/// </summary>
public static class ModelCorruptions
{
    public sealed record Corruption(string Name, string What, Action<string> Apply);

    static string Transformer(string dir) => Directory.GetFiles(dir, "flux-2-*.safetensors").Concat(Directory.GetFiles(dir, "*.safetensors"))
        .First(f => !Path.GetFileName(f).StartsWith("ae", StringComparison.Ordinal));
    static string Vae(string dir) => Path.Combine(dir, "ae.safetensors");
    static string TextEncoder(string dir) => Path.Combine(dir, "text_encoder", "model.safetensors");
    static string Tokenizer(string dir, string name) => Path.Combine(dir, "tokenizer", name);

    public static readonly IReadOnlyList<Corruption> All =
    [
        new("transformer-truncated", "the transformer file cut to half its length", d => Truncate(Transformer(d), 0.5)),
        new("transformer-header-garbage", "the transformer's JSON header overwritten with random bytes", d => HeaderGarbage(Transformer(d))),
        new("transformer-header-length-huge", "the 8-byte header length set to 2^63", d => HeaderLength(Transformer(d), 1UL << 63)),
        new("transformer-header-length-zero", "the 8-byte header length set to 0", d => HeaderLength(Transformer(d), 0)),
        new("transformer-offsets-past-end", "a tensor's data_offsets point past the end of the file", d => OffsetsPastEnd(Transformer(d))),
        new("transformer-missing", "the transformer file deleted", d => File.Delete(Transformer(d))),
        new("transformer-zero-bytes", "the transformer file emptied", d => File.WriteAllBytes(Transformer(d), [])),
        new("transformer-nan-weights", "every float32 of the transformer's first tensor set to NaN", d => NaNWeights(Transformer(d))),
        new("vae-missing", "ae.safetensors deleted", d => File.Delete(Vae(d))),
        new("vae-truncated", "ae.safetensors cut to 100 bytes", d => Truncate(Vae(d), 100.0 / new FileInfo(Vae(d)).Length)),
        new("text-encoder-missing", "text_encoder/model.safetensors deleted", d => File.Delete(TextEncoder(d))),
        new("text-encoder-config-garbage", "text_encoder/config.json is not JSON", d => File.WriteAllText(Path.Combine(d, "text_encoder", "config.json"), "{garbage")),
        new("marker-garbage", "the folder's inference-server.json is not JSON", d => File.WriteAllText(Path.Combine(d, "inference-server.json"), "{\"family\": ")),
        new("marker-wrong-types", "inference-server.json with every value of the wrong type", d => WrongTypes(Path.Combine(d, "inference-server.json"))),
        new("tokenizer-json-garbage", "tokenizer/tokenizer.json is random bytes", d => Garbage(Tokenizer(d, "tokenizer.json"), 4096)),
        new("vocab-zero-bytes", "tokenizer/vocab.json is empty", d => File.WriteAllBytes(Tokenizer(d, "vocab.json"), [])),
        new("merges-garbage", "tokenizer/merges.txt is random bytes", d => Garbage(Tokenizer(d, "merges.txt"), 4096)),
        new("tokenizer-missing", "the tokenizer folder deleted", d => Directory.Delete(Path.Combine(d, "tokenizer"), recursive: true)),
        new("empty-folder", "every file deleted", d => { foreach (var e in Directory.GetFileSystemEntries(d)) { if (Directory.Exists(e)) Directory.Delete(e, true); else File.Delete(e); } }),
    ];

    public static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(to, Path.GetRelativePath(from, f));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(f, target, overwrite: true);
        }
    }

    static void Truncate(string file, double fraction)
    {
        using var s = new FileStream(file, FileMode.Open);
        s.SetLength(Math.Max(1, (long)(s.Length * fraction)));
    }

    static void Garbage(string file, int bytes)
    {
        var b = new byte[bytes];
        new Random(3).NextBytes(b);
        File.WriteAllBytes(file, b);
    }

    static (ulong Length, JsonObject Header) ReadHeader(string file)
    {
        using var s = File.OpenRead(file);
        Span<byte> len = stackalloc byte[8];
        s.ReadExactly(len);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(len);
        var json = new byte[n];
        s.ReadExactly(json);
        return (n, (JsonObject)JsonNode.Parse(json)!);
    }

    static void HeaderGarbage(string file)
    {
        var (n, _) = ReadHeader(file);
        var b = new byte[n];
        new Random(5).NextBytes(b);
        using var s = new FileStream(file, FileMode.Open);
        s.Position = 8;
        s.Write(b);
    }

    static void HeaderLength(string file, ulong value)
    {
        using var s = new FileStream(file, FileMode.Open);
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        s.Write(b);
    }

    /// <summary>
    /// The largest end offset in the header, its digits replaced by as many 9s: the header keeps its length (no re-serialisation)
    /// and the tensor now ends past the end of the file.
    /// </summary>
    static void OffsetsPastEnd(string file)
    {
        var (n, _) = ReadHeader(file);
        var bytes = new byte[n];
        using var s = new FileStream(file, FileMode.Open);
        s.Position = 8;
        s.ReadExactly(bytes);
        string text = Encoding.UTF8.GetString(bytes);
        var last = System.Text.RegularExpressions.Regex.Matches(text, @"""data_offsets"":\s*\[\s*\d+\s*,\s*(\d+)\s*\]")
            .MaxBy(m => long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))!.Groups[1];
        string patched = text[..last.Index] + new string('9', last.Length) + text[(last.Index + last.Length)..];
        s.Position = 8;
        s.Write(Encoding.UTF8.GetBytes(patched));
    }

    /// <summary>NaN in the first F32 tensor's data: a file that parses perfectly and computes garbage.</summary>
    static void NaNWeights(string file)
    {
        var (n, header) = ReadHeader(file);
        var tensor = header.Where(kv => kv.Key != "__metadata__").First(kv => (string?)kv.Value!["dtype"] is "F32" or "BF16");
        long begin = (long)tensor.Value!["data_offsets"]![0]!, end = (long)tensor.Value!["data_offsets"]![1]!;
        bool f32 = (string?)tensor.Value!["dtype"] == "F32";
        var nan = f32 ? BitConverter.GetBytes(float.NaN) : [0xC0, 0x7F];
        using var s = new FileStream(file, FileMode.Open);
        s.Position = 8 + (long)n + begin;
        for (long i = begin; i < end; i += nan.Length) s.Write(nan);
    }

    static void WrongTypes(string file)
    {
        var node = JsonNode.Parse(File.ReadAllText(file)) as JsonObject ?? [];
        foreach (var key in node.Select(kv => kv.Key).ToList()) node[key] = new JsonArray(1, 2);
        File.WriteAllText(file, node.ToJsonString());
    }
}
