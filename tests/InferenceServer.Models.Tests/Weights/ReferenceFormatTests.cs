using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

/// <summary>The fixtures were written by the reference (Python/Rust) safetensors writer: rewriting them must give the same bytes.</summary>
public class ReferenceFormatTests
{
    public static TheoryData<string> FixtureFiles()
    {
        var data = new TheoryData<string>();
        foreach (var f in Directory.EnumerateFiles(Fixtures.Root, "*.safetensors", SearchOption.AllDirectories).Order(StringComparer.Ordinal).Take(8))
            data.Add(Path.GetRelativePath(Fixtures.Root, f));
        return data;
    }

    [Theory]
    [MemberData(nameof(FixtureFiles))]
    public void Rewriting_a_reference_file_reproduces_it_byte_for_byte(string relative)
    {
        using var dir = new TempDir();
        string original = Path.Combine(Fixtures.Root, relative);
        using var src = SafetensorsFile.Open(original);
        var specs = src.Entries.Select(e => new TensorSpec(e.Name, e.DType, e.Shape)).ToList();
        SafetensorsWriter.Write(dir["copy.safetensors"], specs,
            s => s.DType is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 ? src.LoadRaw(s.Name).view(s.Shape) : src.Load(s.Name),
            src.Metadata.Count > 0 ? src.Metadata : null);
        Assert.Equal(File.ReadAllBytes(original), File.ReadAllBytes(dir["copy.safetensors"]));
    }
}
