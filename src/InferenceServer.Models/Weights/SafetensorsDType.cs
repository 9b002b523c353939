using TorchSharp;

namespace InferenceServer.Models.Weights;

/// <summary>The element types a safetensors header may name (spelled as in the header).</summary>
public enum SafetensorsDType
{
    BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2,
}

public static class SafetensorsDTypes
{
    /// <summary>Bytes per element.</summary>
    public static int Size(this SafetensorsDType t) => t switch
    {
        SafetensorsDType.BOOL or SafetensorsDType.U8 or SafetensorsDType.I8 or SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 => 1,
        SafetensorsDType.I16 or SafetensorsDType.F16 or SafetensorsDType.BF16 => 2,
        SafetensorsDType.I32 or SafetensorsDType.F32 => 4,
        SafetensorsDType.I64 or SafetensorsDType.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    public static bool TryParse(string name, out SafetensorsDType dtype) =>
        Enum.TryParse(name, ignoreCase: false, out dtype) && Enum.IsDefined(dtype);

    /// <summary>
    /// The torch type a tensor of this dtype is materialised as. TorchSharp 0.107 has no float8 types, so F8 tensors
    /// are decoded to float32 (see <see cref="Float8"/>); everything else maps one to one.
    /// </summary>
    public static torch.ScalarType ToScalarType(this SafetensorsDType t) => t switch
    {
        SafetensorsDType.BOOL => torch.ScalarType.Bool,
        SafetensorsDType.U8 => torch.ScalarType.Byte,
        SafetensorsDType.I8 => torch.ScalarType.Int8,
        SafetensorsDType.I16 => torch.ScalarType.Int16,
        SafetensorsDType.I32 => torch.ScalarType.Int32,
        SafetensorsDType.I64 => torch.ScalarType.Int64,
        SafetensorsDType.F16 => torch.ScalarType.Float16,
        SafetensorsDType.BF16 => torch.ScalarType.BFloat16,
        SafetensorsDType.F32 => torch.ScalarType.Float32,
        SafetensorsDType.F64 => torch.ScalarType.Float64,
        SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 => torch.ScalarType.Float32,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    /// <summary>The safetensors dtype a torch tensor is written as.</summary>
    public static SafetensorsDType FromScalarType(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Bool => SafetensorsDType.BOOL,
        torch.ScalarType.Byte => SafetensorsDType.U8,
        torch.ScalarType.Int8 => SafetensorsDType.I8,
        torch.ScalarType.Int16 => SafetensorsDType.I16,
        torch.ScalarType.Int32 => SafetensorsDType.I32,
        torch.ScalarType.Int64 => SafetensorsDType.I64,
        torch.ScalarType.Float16 => SafetensorsDType.F16,
        torch.ScalarType.BFloat16 => SafetensorsDType.BF16,
        torch.ScalarType.Float32 => SafetensorsDType.F32,
        torch.ScalarType.Float64 => SafetensorsDType.F64,
        _ => throw new NotSupportedException($"torch dtype {t} has no safetensors equivalent"),
    };
}
