namespace InferenceServer.Models.Weights;

/// <summary>One tensor of a checkpoint: where its bytes are and what they mean.</summary>
/// <param name="Name">The key, e.g. <c>double_blocks.0.img_attn.qkv.weight</c>.</param>
/// <param name="DType">Element type as stored.</param>
/// <param name="Shape">Dimensions (empty for a scalar).</param>
/// <param name="Offset">Absolute byte offset of the data in <paramref name="File"/>.</param>
/// <param name="ByteLength">Length of the data in bytes.</param>
/// <param name="File">The file holding it.</param>
public sealed record TensorEntry(string Name, SafetensorsDType DType, long[] Shape, long Offset, long ByteLength, string File)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}
