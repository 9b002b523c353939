using System.Text.Json;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

public class ShardedCheckpointTests
{
    static readonly TensorSpec[] Specs =
    [
        new("embed.weight", SafetensorsDType.BF16, [64, 32]),  // 4096 bytes
        new("blocks.0.w", SafetensorsDType.F32, [32, 32]),     // 4096
        new("blocks.0.b", SafetensorsDType.F32, [32]),         // 128
        new("blocks.1.w", SafetensorsDType.F8_E4M3, [32, 32]), // 1024
        new("scale", SafetensorsDType.F32, []),                // 4
        new("head.w", SafetensorsDType.F16, [10, 32]),         // 640
    ];

    static Tensor Produce(TensorSpec s) => arange(s.ElementCount, dtype: ScalarType.Float32).view(s.Shape) * 0.01f - 1;

    [Fact]
    public void Sharded_write_reads_back_equal_to_the_single_file()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        SafetensorsWriter.Write(dir["single.safetensors"], Specs, Produce, new Dictionary<string, string> { ["format"] = "pt" });
        var progress = new List<long>();
        SafetensorsWriter.WriteSharded(dir["sharded"], "model", Specs, Produce, maxShardBytes: 5000, new Dictionary<string, string> { ["format"] = "pt" }, new SyncProgress(progress));

        Assert.Equal(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json"],
            Directory.GetFiles(dir["sharded"]).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        using var index = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir["sharded"], "model.safetensors.index.json")));
        Assert.Equal(Specs.Sum(s => s.ByteLength), index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
        var map = index.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString());
        Assert.Equal("model-00001-of-00003.safetensors", map["embed.weight"]);
        Assert.Equal("model-00002-of-00003.safetensors", map["blocks.0.w"]);
        Assert.Equal("model-00002-of-00003.safetensors", map["blocks.0.b"]);
        Assert.Equal("model-00003-of-00003.safetensors", map["head.w"]);
        Assert.Equal(Specs.Sum(s => s.ByteLength), progress[^1]);
        Assert.Equal(Specs.Length, progress.Count);

        using var single = SafetensorsFile.Open(dir["single.safetensors"]);
        foreach (var source in new[] { dir["sharded"], Path.Combine(dir["sharded"], "model.safetensors.index.json") })
        {
            using var sharded = Checkpoint.Open(source);
            Assert.IsType<ShardedSafetensors>(sharded);
            Assert.Equal(Specs.Select(s => s.Name), sharded.Entries.Select(e => e.Name));
            foreach (var s in Specs)
            {
                Assert.True(sharded.TryGetEntry(s.Name, out var e));
                Assert.Equal(s.DType, e.DType);
                Assert.Equal(s.Shape, e.Shape);
                Assert.Equal(single.LoadRaw(s.Name).data<byte>().ToArray(), sharded.LoadRaw(s.Name).data<byte>().ToArray());
            }
            Assert.Equal(-1f, sharded.Load("scale").item<float>());
        }
        // Every shard carries the metadata.
        using var shard = SafetensorsFile.Open(Path.Combine(dir["sharded"], "model-00002-of-00003.safetensors"));
        Assert.Equal("pt", shard.Metadata["format"]);
    }

    [Fact]
    public void Checkpoint_opens_a_file_a_folder_of_one_file_and_merges_a_folder_of_several()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        Directory.CreateDirectory(dir["one"]);
        Directory.CreateDirectory(dir["two"]);
        SafetensorsWriter.Write(Path.Combine(dir["one"], "w.safetensors"), [("a", ones(2)), ("b", zeros(3))]);
        SafetensorsWriter.Write(Path.Combine(dir["two"], "x.safetensors"), [("a", ones(2))]);
        SafetensorsWriter.Write(Path.Combine(dir["two"], "y.safetensors"), [("b", zeros(3))]);

        using (var f = Checkpoint.Open(Path.Combine(dir["one"], "w.safetensors"))) Assert.IsType<SafetensorsFile>(f);
        using (var f = Checkpoint.Open(dir["one"])) Assert.Equal(["a", "b"], f.Entries.Select(e => e.Name));
        using (var merged = Checkpoint.Open(dir["two"]))
        {
            Assert.Equal(["a", "b"], merged.Entries.Select(e => e.Name));
            Assert.Equal(2f, merged.Load("a").sum().item<float>());
            Assert.Equal([3L], merged.Load("b").shape);
        }

        SafetensorsWriter.Write(Path.Combine(dir["two"], "z.safetensors"), [("b", ones(3))]);
        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Open(dir["two"]));
        Assert.Contains("'b'", e.Message);
        Assert.Contains("y.safetensors", e.Message);
        Assert.Contains("z.safetensors", e.Message);

        Assert.Throws<FileNotFoundException>(() => Checkpoint.Open(dir.Path)); // no safetensors directly inside
    }

    [Fact]
    public void Discover_finds_shard_sets_and_loose_files_recursively()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        SafetensorsWriter.WriteSharded(dir["transformer"], "diffusion_pytorch_model", Specs, Produce, maxShardBytes: 5000);
        Directory.CreateDirectory(dir["vae"]);
        SafetensorsWriter.Write(Path.Combine(dir["vae"], "diffusion_pytorch_model.safetensors"), [("a", ones(2))]);
        SafetensorsWriter.Write(dir["top.safetensors"], [("a", ones(2))]);

        Assert.Equal(
            [dir["top.safetensors"], Path.Combine(dir["transformer"], "diffusion_pytorch_model.safetensors.index.json"), Path.Combine(dir["vae"], "diffusion_pytorch_model.safetensors")],
            Checkpoint.Discover(dir.Path));
    }

    sealed class SyncProgress(List<long> into) : IProgress<long> { public void Report(long value) => into.Add(value); }
}
