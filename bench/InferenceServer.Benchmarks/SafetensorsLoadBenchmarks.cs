using System.IO.MemoryMappedFiles;
using BenchmarkDotNet.Attributes;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks;

/// <summary>
/// Loading one 64 MB tensor from a 3 GB safetensors file: SafetensorsFile's positional read vs a memory map + copy
/// vs a seek-and-read through a FileStream (what TorchSharp.PyBridge does with keysToKeep) vs reading every tensor
/// (an eager loader). The file is sparse: 47 tensors are holes, only the last one (the one loaded) holds data, so the numbers
/// measure the reader, not the disk (the data is in the page cache after the first iteration).
/// </summary>
/// Run: dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*SafetensorsLoad*'
[MemoryDiagnoser]
[WarmupCount(2), IterationCount(6), InvocationCount(1, unrollFactor: 1)] // read-all takes seconds per call
public class SafetensorsLoadBenchmarks
{
    const long TensorBytes = 64L << 20;
    const int Tensors = 48;
    string path = "";

    [GlobalSetup]
    public void Setup()
    {
        path = Path.Combine(Path.GetTempPath(), $"bench-{Environment.ProcessId}.safetensors");
        var specs = Enumerable.Range(0, Tensors).Select(i => new TensorSpec($"blocks.{i}.weight", SafetensorsDType.BF16, [4096, TensorBytes / 2 / 4096])).ToList();
        var header = SafetensorsWriter.Header(specs, null);
        using var fs = new FileStream(path, FileMode.Create);
        fs.Write(BitConverter.GetBytes((ulong)header.Length));
        fs.Write(header);
        fs.SetLength(8 + header.Length + Tensors * TensorBytes);
        fs.Position = 8 + header.Length + (Tensors - 1) * TensorBytes;
        var chunk = new byte[1 << 20];
        Random.Shared.NextBytes(chunk);
        for (long i = 0; i < TensorBytes; i += chunk.Length) fs.Write(chunk);
    }

    [GlobalCleanup]
    public void Cleanup() => File.Delete(path);

    string Last => $"blocks.{Tensors - 1}.weight";

    [Benchmark(Baseline = true, Description = "SafetensorsFile: open + load last tensor (pread)")]
    public long LoadOne()
    {
        using var f = SafetensorsFile.Open(path);
        using var t = f.Load(Last);
        return t.numel();
    }

    [Benchmark(Description = "mmap: open + map + copy last tensor")]
    public unsafe long MappedLoadOne()
    {
        using var f = SafetensorsFile.Open(path);
        var e = f[Last];
        using var t = empty(e.Shape, ScalarType.BFloat16);
        using var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        try { new ReadOnlySpan<byte>(p + view.PointerOffset + e.Offset, (int)e.ByteLength).CopyTo(t.bytes); }
        finally { view.SafeMemoryMappedViewHandle.ReleasePointer(); }
        return t.numel();
    }

    [Benchmark(Description = "stream: open + seek + read last tensor (PyBridge's way)")]
    public long StreamLoadOne()
    {
        using var f = SafetensorsFile.Open(path);
        var e = f[Last];
        using var t = empty(e.Shape, ScalarType.BFloat16);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
        fs.Position = e.Offset;
        fs.ReadExactly(t.bytes);
        return t.numel();
    }

    [Benchmark(Description = "read all 48 tensors (3 GB)")]
    public long ReadAll()
    {
        using var f = SafetensorsFile.Open(path);
        long n = 0;
        foreach (var e in f.Entries)
        {
            using var t = f.Load(e.Name);
            n += t.numel();
        }
        return n;
    }
}
