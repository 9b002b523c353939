using System.Text;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

public class SafetensorsRoundTripTests
{
    static Tensor Sample(SafetensorsDType dtype, long[] shape)
    {
        var g = new TorchSharp.torch.Generator(7);
        return dtype switch
        {
            SafetensorsDType.BOOL => randint(0, 2, shape, generator: g).to(ScalarType.Bool),
            SafetensorsDType.U8 or SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 => randint(0, 256, shape, generator: g).to(ScalarType.Byte),
            SafetensorsDType.I8 => randint(-128, 128, shape, generator: g).to(ScalarType.Int8),
            SafetensorsDType.I16 => randint(-30000, 30000, shape, generator: g).to(ScalarType.Int16),
            SafetensorsDType.I32 => randint(int.MinValue, int.MaxValue, shape, generator: g).to(ScalarType.Int32),
            SafetensorsDType.I64 => randint(long.MinValue / 2, long.MaxValue / 2, shape, dtype: ScalarType.Int64, generator: g),
            _ => (randn(shape, generator: g) * 100).to(dtype.ToScalarType()),
        };
    }

    public static TheoryData<SafetensorsDType> AllDTypes()
    {
        var d = new TheoryData<SafetensorsDType>();
        foreach (var t in Enum.GetValues<SafetensorsDType>()) d.Add(t);
        return d;
    }

    [Theory]
    [MemberData(nameof(AllDTypes))]
    public void Every_dtype_round_trips_byte_for_byte_including_scalars_and_empty_tensors(SafetensorsDType dtype)
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        long[][] shapes = [[3, 5], [], [0, 4], [2, 3, 4]];
        var originals = shapes.Select((s, i) => ($"t{i}", Sample(dtype, s))).ToList();
        var specs = originals.Select(o => new TensorSpec(o.Item1, dtype, o.Item2.shape)).ToList();
        SafetensorsWriter.Write(dir["a.safetensors"], specs, s => originals.Single(o => o.Item1 == s.Name).Item2.alias());

        using var f = SafetensorsFile.Open(dir["a.safetensors"]);
        Assert.Equal(originals.Select(o => o.Item1), f.Entries.Select(e => e.Name));
        foreach (var (name, t) in originals)
        {
            var e = f[name];
            Assert.Equal(dtype, e.DType);
            Assert.Equal(t.shape, e.Shape);
            Assert.Equal(t.numel() * dtype.Size(), e.ByteLength);
            var raw = f.LoadRaw(name);
            Assert.Equal(Bytes(t), raw.data<byte>().ToArray());
            var loaded = f.Load(name);
            Assert.Equal(t.shape, loaded.shape);
            if (dtype is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2)
            {
                Assert.Equal(ScalarType.Float32, loaded.dtype);
                Assert.Equal(Bytes(t), Bytes(Float8.Encode(loaded, dtype)).Select((b, i) => IsNaNCode(Bytes(t)[i], dtype) ? Bytes(t)[i] : b).ToArray());
            }
            else
            {
                Assert.Equal(t.dtype, loaded.dtype);
                Assert.Equal(Bytes(t), Bytes(loaded));
            }
        }
    }

    static bool IsNaNCode(byte b, SafetensorsDType f) => float.IsNaN(Float8.Decode(b, f));

    static byte[] Bytes(Tensor t) => t.numel() == 0 ? [] : t.contiguous().view(-1).bytes.ToArray();

    [Fact]
    public void Writer_pads_the_header_to_8_bytes_with_spaces_and_keeps_metadata()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\"" };
        SafetensorsWriter.Write(dir["m.safetensors"], [("w", arange(6, dtype: ScalarType.Float32).view(2, 3)), ("b", tensor(new short[] { 1, 2 }).to(ScalarType.Int16))], meta);

        var bytes = File.ReadAllBytes(dir["m.safetensors"]);
        long n = BitConverter.ToInt64(bytes, 0);
        Assert.Equal(0, n % 8);
        Assert.Equal(8 + n + 6 * 4 + 2 * 2, bytes.Length);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.StartsWith("{\"__metadata__\":", header);
        Assert.Equal(header.TrimEnd(' ').Length + (header.Length - header.TrimEnd(' ').Length), header.Length);
        Assert.EndsWith("}", header.TrimEnd(' '));

        using var f = SafetensorsFile.Open(dir["m.safetensors"]);
        Assert.Equal(meta, f.Metadata);
        Assert.Equal(new float[] { 0, 1, 2, 3, 4, 5 }, f.Load("w").data<float>().ToArray());
        Assert.Equal(new long[] { 2, 3 }, f["w"].Shape);
        Assert.Equal(new short[] { 1, 2 }, f.Load("b").data<short>().ToArray());
        Assert.Equal(8 + n, f["w"].Offset);
        Assert.Equal(8 + n + 24, f["b"].Offset);
    }

    [Fact]
    public void Streaming_writer_converts_to_the_spec_dtype_and_reports_bytes()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var values = new float[] { 1f, -2.5f, 448f, 1000f, 0.0f, 3.1415927f };
        TensorSpec[] specs = [new("bf", SafetensorsDType.BF16, [6]), new("e4", SafetensorsDType.F8_E4M3, [6]), new("f16", SafetensorsDType.F16, [2, 3])];
        var reports = new List<long>();
        var produced = new List<Tensor>();
        SafetensorsWriter.Write(dir["s.safetensors"], specs, s =>
        {
            var t = tensor(values).view(s.Shape);
            produced.Add(t);
            return t;
        }, bytesWritten: new SyncProgress(reports));

        Assert.Equal(new long[] { 12, 18, 30 }, reports);
        Assert.All(produced, t => Assert.True(t.IsInvalid)); // the writer disposed each tensor it was given
        using var f = SafetensorsFile.Open(dir["s.safetensors"]);
        Assert.Equal(new float[] { 1f, -2.5f, 448f, 1000f, 0f, 3.140625f }, f.Load("bf", ScalarType.Float32).data<float>().ToArray());
        Assert.Equal(new float[] { 1f, -2.5f, 448f, 448f, 0f, 3.25f }, f.Load("e4").data<float>().ToArray());
        Assert.Equal(new byte[] { 0x38, 0xC2, 0x7E, 0x7E, 0x00, 0x45 }, f.LoadRaw("e4").data<byte>().ToArray());
        Assert.Equal(ScalarType.Float16, f.Load("f16").dtype);
        Assert.Equal(new float[] { 1f, -2.5f, 448f, 1000f, 0f, 3.140625f }, f.Load("f16", ScalarType.Float32).data<float>().ToArray());
    }

    [Fact]
    public void Writer_refuses_a_tensor_whose_shape_differs_from_its_spec_and_leaves_no_file()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(dir["x.safetensors"], [new TensorSpec("w", SafetensorsDType.F32, [2, 2])], _ => zeros(3)));
        Assert.Contains("'w'", e.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    /// <summary>Progress that records synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    sealed class SyncProgress(List<long> into) : IProgress<long> { public void Report(long value) => into.Add(value); }
}
