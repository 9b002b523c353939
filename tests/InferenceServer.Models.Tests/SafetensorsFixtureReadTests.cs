using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests;

public class SafetensorsFixtureReadTests
{
    public static TheoryData<string> DitCases => Fixtures.Cases("flux2-dit-");

    [Theory, MemberData(nameof(DitCases))]
    public void Reads_a_fixture_weight_file_by_name_with_shapes_and_values(string caseName)
    {
        using var f = SafetensorsFile.Open(Path.Combine(Fixtures.CaseDir(caseName), "weights.safetensors"));
        var qkv = f["double_blocks.0.img_attn.qkv.weight"];
        Assert.Equal(SafetensorsDType.F32, qkv.DType);
        Assert.Equal(2, qkv.Shape.Length);
        Assert.Equal(3 * qkv.Shape[1], qkv.Shape[0]);
        using var scope = NewDisposeScope();
        var t = f.Load(qkv.Name);
        Assert.Equal(qkv.Shape, t.shape);
        Assert.True(t.abs().sum().item<float>() > 0);
        var bf = f.Load(qkv.Name, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, bf.dtype);
        Assert.True((bf.to(ScalarType.Float32) - t).abs().max().item<float>() < 0.02f * t.abs().max().item<float>());
    }
}
