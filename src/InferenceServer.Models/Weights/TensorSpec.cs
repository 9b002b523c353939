using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>What a tensor will be in a file being written: its key, stored element type and dimensions.</summary>
/// <param name="Name">The key, e.g. <c>double_blocks.0.img_attn.qkv.weight</c>.</param>
/// <param name="DType">Element type as stored.</param>
/// <param name="Shape">Dimensions (empty for a scalar).</param>
public sealed record TensorSpec(string Name, SafetensorsDType DType, long[] Shape)
{
    /// <summary>Number of elements (1 for a scalar).</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));

    /// <summary>Bytes the tensor takes in the file.</summary>
    public long ByteLength => checked(ElementCount * DType.Size());

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    /// <summary>The spec a tensor is written with as it is (FP8 is never inferred: a uint8 tensor is U8).</summary>
    public static TensorSpec Of(string name, Tensor t) => new(name, SafetensorsDTypes.FromScalarType(t.dtype), t.shape);
}
