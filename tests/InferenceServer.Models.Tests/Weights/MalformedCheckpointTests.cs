using System.Text;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

/// <summary>Every defect is refused at open with an exception naming the file and, where one is involved, the tensor.</summary>
public class MalformedCheckpointTests
{
    static string Write(TempDir dir, string header, int dataBytes, ulong? declaredLength = null)
    {
        string path = dir["bad.safetensors"];
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes(declaredLength ?? (ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
        return path;
    }

    static void Refused(string path, params string[] mentions)
    {
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(path, e.Message);
        foreach (var m in mentions) Assert.Contains(m, e.Message);
        // Checkpoint.Open reports the same.
        Assert.Contains(path, Assert.Throws<InvalidDataException>(() => Checkpoint.Open(path).Dispose()).Message);
    }

    [Fact]
    public void Header_length_past_the_end_of_the_file() { using var d = new TempDir(); Refused(Write(d, "{}", 0, declaredLength: 1000), "1000", "past the end"); }

    [Fact]
    public void Huge_header_length() { using var d = new TempDir(); Refused(Write(d, "{}", 0, declaredLength: ulong.MaxValue - 3), "out of range"); }

    [Fact]
    public void Header_not_JSON() { using var d = new TempDir(); Refused(Write(d, "{\"a\": [1, 2", 0), "not valid JSON"); }

    [Fact]
    public void Header_not_an_object() { using var d = new TempDir(); Refused(Write(d, "[1, 2, 3]", 0), "not a JSON object"); }

    [Fact]
    public void Unknown_dtype() { using var d = new TempDir(); Refused(Write(d, """{"w":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}""", 1), "'w'", "unknown dtype 'F7'"); }

    [Theory]
    [InlineData("[-1]")]
    [InlineData("[2.5]")]
    [InlineData("\"3\"")]
    [InlineData("[\"a\"]")]
    public void Bad_shape(string shape) { using var d = new TempDir(); Refused(Write(d, "{\"w\":{\"dtype\":\"U8\",\"shape\":" + shape + ",\"data_offsets\":[0,1]}}", 1), "'w'"); }

    [Fact]
    public void Data_offsets_out_of_range() { using var d = new TempDir(); Refused(Write(d, """{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8), "'w'", "past the end"); }

    [Fact]
    public void Data_offsets_reversed() { using var d = new TempDir(); Refused(Write(d, """{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}""", 8), "'w'", "bad data_offsets"); }

    [Fact]
    public void Overlapping_tensors()
    {
        using var d = new TempDir();
        Refused(Write(d, """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12), "'b'", "'a'", "overlaps");
    }

    [Fact]
    public void Byte_count_not_matching_shape_and_dtype() { using var d = new TempDir(); Refused(Write(d, """{"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}""", 8), "'w'", "expected 6"); }

    [Fact]
    public void File_truncated_in_the_data()
    {
        using var d = new TempDir();
        string path = d["t.safetensors"];
        using (var s = NewDisposeScope()) SafetensorsWriter.Write(path, [("a", ones(4)), ("b", ones(1000))]);
        using (var fs = new FileStream(path, FileMode.Open)) fs.SetLength(fs.Length - 100);
        Refused(path, "'b'", "truncated");
    }

    [Fact]
    public void Zero_byte_file()
    {
        using var d = new TempDir();
        File.WriteAllBytes(d["z.safetensors"], []);
        Refused(d["z.safetensors"], "0 bytes");
    }

    [Fact]
    public void Missing_file()
    {
        using var d = new TempDir();
        var e = Assert.Throws<FileNotFoundException>(() => SafetensorsFile.Open(d["nope.safetensors"]));
        Assert.Contains(d["nope.safetensors"], e.Message);
        Assert.Contains(d["nope.safetensors"], Assert.Throws<FileNotFoundException>(() => Checkpoint.Open(d["nope.safetensors"])).Message);
    }

    static string WriteShards(TempDir d)
    {
        TensorSpec[] specs = [new("a", SafetensorsDType.F32, [4]), new("b", SafetensorsDType.F32, [4])];
        SafetensorsWriter.WriteSharded(d.Path, "model", specs, s => ones(s.Shape), maxShardBytes: 16);
        return d["model.safetensors.index.json"];
    }

    [Fact]
    public void Index_pointing_at_a_missing_shard()
    {
        using var d = new TempDir();
        string index = WriteShards(d);
        File.Delete(d["model-00002-of-00002.safetensors"]);
        var e = Assert.Throws<FileNotFoundException>(() => ShardedSafetensors.Open(index));
        Assert.Contains(index, e.Message);
        Assert.Contains("'b'", e.Message);
        Assert.Contains("model-00002-of-00002.safetensors", e.Message);
        Assert.Throws<FileNotFoundException>(() => Checkpoint.Open(d.Path));
    }

    [Fact]
    public void Index_naming_a_tensor_absent_from_its_shard()
    {
        using var d = new TempDir();
        string index = WriteShards(d);
        File.WriteAllText(index, File.ReadAllText(index).Replace("\"b\"", "\"c\""));
        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Open(index));
        Assert.Contains(index, e.Message);
        Assert.Contains("'c'", e.Message);
        Assert.Contains("does not hold it", e.Message);
    }

    [Theory]
    [InlineData("{\"weight_map\": ")]
    [InlineData("{\"metadata\": {}}")]
    [InlineData("{\"weight_map\": {\"a\": 3}}")]
    public void Malformed_index(string json)
    {
        using var d = new TempDir();
        File.WriteAllText(d["x.safetensors.index.json"], json);
        Assert.Contains(d["x.safetensors.index.json"], Assert.Throws<InvalidDataException>(() => Checkpoint.Open(d.Path)).Message);
    }
}
