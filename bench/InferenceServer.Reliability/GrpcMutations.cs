using System.Buffers.Binary;
using System.Text;

namespace InferenceServer.Reliability;

/// <summary>
/// gRPC messages as raw protobuf bytes written field by field (so wire types, lengths and UTF-8 can be wrong):
/// GenerateRequest with extreme values, invalid UTF-8 strings, broken references; byte-level mutations of a valid
/// message (flips, truncation, overlong varints, lengths past the end); the other methods and an unknown one.
/// </summary>
public static class GrpcMutations
{
    public const string Service = "/inference.v1.ImageService/";

    /// <summary>A protobuf writer with no schema: tag, varint, fixed and length-delimited fields.</summary>
    public sealed class Proto
    {
        readonly MemoryStream s = new();
        public Proto Varint(int field, ulong v) { Tag(field, 0); Raw(v); return this; }
        public Proto Fixed32(int field, uint v) { Tag(field, 5); Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); s.Write(b); return this; }
        public Proto Fixed64(int field, ulong v) { Tag(field, 1); Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); s.Write(b); return this; }
        public Proto Bytes(int field, byte[] v) { Tag(field, 2); Raw((ulong)v.Length); s.Write(v); return this; }
        public Proto String(int field, string v) => Bytes(field, Encoding.UTF8.GetBytes(v));
        public Proto Tag(int field, int wire) { Raw(((ulong)field << 3) | (uint)wire); return this; }
        public Proto Raw(ulong v) { while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; } s.WriteByte((byte)v); return this; }
        public Proto RawBytes(byte[] b) { s.Write(b); return this; }
        public byte[] ToArray() => s.ToArray();
    }

    /// <summary>prompt, 64x64, one step, seed 1: valid and cheap.</summary>
    public static Proto Base() => new Proto().String(2, "fuzz").Varint(4, 64).Varint(5, 64).Varint(10, 1).Varint(9, 1);

    static FuzzCase Case(string cls, string name, byte[] body, string method = "Generate", bool? streaming = null) => new()
    {
        Class = cls, Name = name, Transport = Transport.Grpc, Path = Service + method, Body = body,
        Streaming = streaming ?? method == "GenerateStream",
    };

    /// <summary>Valid wire format, hostile values.</summary>
    public static FuzzCase Fields(Random rng, ImageSamples samples)
    {
        string method = rng.Next(3) == 0 ? "GenerateStream" : "Generate";
        var p = Base();
        string name;
        switch (rng.Next(20))
        {
            case 0: p.Varint(4, uint.MaxValue).Varint(5, uint.MaxValue); name = "width = height = 2^32-1"; break;
            case 1: p.Varint(4, 0).Varint(5, 1); name = "height 1"; break;
            case 2: p.Varint(8, 0); name = "n = 0"; break;
            case 3: p.Varint(8, uint.MaxValue); name = "n = 2^32-1"; break;
            case 4: p.Varint(9, unchecked((ulong)long.MinValue)); name = "seed = int64 min"; break;
            case 5: p.Varint(9, ulong.MaxValue); name = "seed = -1"; break;
            case 6: p.Varint(10, uint.MaxValue); name = "steps = 2^32-1"; break;
            case 7: p.Fixed32(11, BitConverter.SingleToUInt32Bits(float.NaN)); name = "guidance NaN"; break;
            case 8: p.Fixed32(11, BitConverter.SingleToUInt32Bits(float.PositiveInfinity)); name = "guidance +inf"; break;
            case 9: p.Varint(12, 99); name = "output_format 99 (unknown enum)"; break;
            case 10: p.Varint(13, uint.MaxValue); name = "output_compression 2^32-1"; break;
            case 11: p.Varint(14, 1).Varint(10, 2); name = "preview every step"; method = "GenerateStream"; break;
            case 12: p.String(6, "0:0").Varint(4, 0).Varint(5, 0); name = "aspect_ratio 0:0"; break;
            case 13: p.String(7, "99K").Varint(4, 0).Varint(5, 0); name = "resolution 99K"; break;
            case 14: p.String(15, new string('r', 100_000)); name = "request_id of 100000 chars"; break;
            case 15: p.Bytes(16, new Proto().String(1, "../../etc/passwd").Fixed64(2, BitConverter.DoubleToUInt64Bits(double.NaN)).ToArray()); name = "lora path traversal, scale NaN"; break;
            case 16:
            {
                var kind = samples.Kinds[rng.Next(samples.Kinds.Length)];
                var formats = samples.ByFormat.Keys.ToArray();
                var (bytes, n) = ImageMutations.Make(samples, formats[rng.Next(formats.Length)], kind, rng);
                p.Bytes(3, new Proto().Bytes(1, bytes).ToArray());
                name = $"reference: {n}";
                break;
            }
            case 17: for (int i = 0; i < 11; i++) p.Bytes(3, new Proto().Bytes(1, samples.Valid).ToArray()); name = "11 references"; break;
            case 18: p.String(2, new string('p', 8001)); name = "prompt of 8001 chars"; break;
            default: p.String(1, "nope"); name = "unknown model"; break;
        }
        return Case("grpc-fields", name, p.ToArray(), method);
    }

    /// <summary>Invalid UTF-8 in each string field (protobuf requires valid UTF-8 for proto3 strings).</summary>
    public static FuzzCase Utf8(Random rng)
    {
        byte[][] invalid = [[0xFF], [0xC3, 0x28], [0xED, 0xA0, 0x80], [0xC0, 0x80], [0x80, 0x80]];
        int[] fields = [1, 2, 6, 7, 15];
        int f = fields[rng.Next(fields.Length)];
        byte[] bad = invalid[rng.Next(invalid.Length)];
        var p = Base().Bytes(f, [(byte)'a', .. bad, (byte)'b']);
        if (rng.Next(4) == 0) p.Bytes(16, new Proto().Bytes(1, bad).ToArray());
        return Case("grpc-utf8", $"invalid UTF-8 {Convert.ToHexString(bad)} in field {f}", p.ToArray(), rng.Next(2) == 0 ? "Generate" : "GenerateStream");
    }

    /// <summary>Byte-level damage to a valid message.</summary>
    public static FuzzCase Bytes(Random rng, ImageSamples samples)
    {
        byte[] valid = Base().Bytes(3, new Proto().Bytes(1, samples.Valid).ToArray()).ToArray();
        string method = rng.Next(3) == 0 ? "GenerateStream" : "Generate";
        switch (rng.Next(10))
        {
            case 0:
            {
                var b = (byte[])valid.Clone();
                int flips = rng.Next(1, 6);
                for (int i = 0; i < flips; i++) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8));
                return Case("grpc-bytes", $"{flips} bit flips", b, method);
            }
            case 1: { int n = rng.Next(1, valid.Length); return Case("grpc-bytes", $"truncated to {n} bytes", valid[..n], method); }
            case 2: return Case("grpc-bytes", "overlong varint", Base().Tag(4, 0).RawBytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).ToArray(), method);
            case 3: return Case("grpc-bytes", "length past the end", Base().Tag(2, 2).Raw(1_000_000).RawBytes("abc"u8.ToArray()).ToArray(), method);
            case 4: return Case("grpc-bytes", "wrong wire type for prompt (varint)", new Proto().Varint(2, 5).Varint(4, 64).Varint(5, 64).Varint(10, 1).ToArray(), method);
            case 5: return Case("grpc-bytes", "field number 0", Base().Tag(0, 0).Raw(1).ToArray(), method);
            case 6: return Case("grpc-bytes", "unknown fields and groups", Base().Varint(999, 1).Tag(77, 3).Tag(77, 4).Bytes(536870911, [1, 2]).ToArray(), method);
            case 7: { var b = new byte[rng.Next(1, 2048)]; rng.NextBytes(b); return Case("grpc-bytes", $"{b.Length} random bytes", b, method); }
            case 8: return Case("grpc-bytes", "empty message", [], method);
            default: return Case("grpc-bytes", "reference message with a length past the end", Base().Tag(3, 2).Raw(10).RawBytes([0x0A, 0xFF, 0xFF, 0xFF, 0x0F]).ToArray(), method);
        }
    }

    /// <summary>The other methods with garbage, and names the service does not have.</summary>
    public static FuzzCase Methods(Random rng)
    {
        var garbage = new byte[rng.Next(0, 64)];
        rng.NextBytes(garbage);
        return rng.Next(5) switch
        {
            0 => Case("grpc-methods", "ListModels with garbage", garbage, "ListModels"),
            1 => Case("grpc-methods", "ListLoras with garbage", garbage, "ListLoras"),
            2 => Case("grpc-methods", "unknown method", garbage, "Explode"),
            3 => Case("grpc-methods", "Generate called as server-streaming", Base().ToArray(), "Generate", streaming: true) with { },
            _ => Case("grpc-methods", "ListModels, empty", [], "ListModels"),
        };
    }
}
