using InferenceServer.Tests.Shared;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

[Collection(RunAlone.Name)]
public class SparseFileTests
{
    internal static long RssBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        throw new InvalidOperationException("no VmRSS in /proc/self/status");
    }

    /// <summary>
    /// A sparse safetensors file: a header naming <paramref name="holes"/> F32 tensors of <paramref name="holeBytes"/>
    /// each (never written: a hole, so no disk is used) and a small tensor "tail" at the very end, holding 0..n-1.
    /// </summary>
    internal static void WriteSparse(string path, int holes, long holeBytes, int tailElements)
    {
        var specs = Enumerable.Range(0, holes).Select(i => new TensorSpec($"big.{i}", SafetensorsDType.F32, [holeBytes / 4]))
            .Append(new TensorSpec("tail", SafetensorsDType.F32, [tailElements])).ToList();
        var header = SafetensorsWriter.Header(specs, null);
        long dataStart = 8 + header.Length;
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write);
        fs.Write(BitConverter.GetBytes((ulong)header.Length));
        fs.Write(header);
        fs.SetLength(dataStart + holes * holeBytes + tailElements * 4L);
        fs.Position = dataStart + holes * holeBytes;
        fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(Enumerable.Range(0, tailElements).Select(i => (float)i).ToArray().AsSpan()));
    }

    [Fact]
    public void Loading_the_last_tensor_of_a_6GB_file_reads_only_that_tensor()
    {
        using var dir = new TempDir();
        string path = dir["sparse.safetensors"];
        WriteSparse(path, holes: 3, holeBytes: 2L << 30, tailElements: 1 << 20);
        long before = RssBytes();
        using var f = SafetensorsFile.Open(path);
        Assert.True(f.FileLength > 6L << 30);
        using var tail = f.Load("tail");
        long grown = RssBytes() - before;

        Assert.Equal(1 << 20, tail.numel());
        Assert.Equal(0f, tail[0].item<float>());
        Assert.Equal((1 << 20) - 1f, tail[-1].item<float>());
        Assert.Equal(2L << 30, f["big.2"].ByteLength);
        Assert.True(grown < 256L << 20, $"RSS grew by {grown >> 20} MB loading a 4 MB tensor of a {f.FileLength >> 20} MB file");
    }
}

[Collection(RunAlone.Name)]
public class StreamingWriteMemoryTests
{
    [Fact]
    public void Streaming_write_of_512_MB_holds_one_tensor_at_a_time()
    {
        using var dir = new TempDir();
        var specs = Enumerable.Range(0, 16).Select(i => new TensorSpec($"w.{i}", SafetensorsDType.F32, [8 << 20])).ToList(); // 32 MB each
        long before = SparseFileTests.RssBytes(), peak = before;
        SafetensorsWriter.Write(dir["big.safetensors"], specs, s =>
        {
            peak = Math.Max(peak, SparseFileTests.RssBytes());
            return full(s.Shape, float.Parse(s.Name[2..]));
        });
        peak = Math.Max(peak, SparseFileTests.RssBytes());

        Assert.True(peak - before < 160L << 20, $"RSS grew by {(peak - before) >> 20} MB writing 16 tensors of 32 MB");
        using var f = SafetensorsFile.Open(dir["big.safetensors"]);
        Assert.Equal(16L * (32 << 20), f.Entries.Sum(e => e.ByteLength));
        using var last = f.Load("w.15");
        Assert.Equal(15f, last[-1].item<float>());
    }
}
