using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// FP8 (OCP E4M3FN and E5M2) decoding. TorchSharp 0.107 has no float8 scalar types, so FP8 bytes are kept as
/// uint8 tensors and decoded through a 256-entry table (one gather, on any device).
/// </summary>
public static class Float8
{
    static readonly float[] E4M3Table = BuildTable(exponentBits: 4, mantissaBits: 3, bias: 7, fn: true);
    static readonly float[] E5M2Table = BuildTable(exponentBits: 5, mantissaBits: 2, bias: 15, fn: false);

    /// <summary>The float value of one FP8 byte.</summary>
    public static float Decode(byte b, SafetensorsDType format) => Table(format)[b];

    /// <summary>Decodes a uint8 tensor of FP8 codes to float32 (same shape, same device).</summary>
    public static Tensor ToFloat32(Tensor codes, SafetensorsDType format)
    {
        if (codes.dtype != ScalarType.Byte) throw new ArgumentException($"FP8 codes must be uint8, got {codes.dtype}", nameof(codes));
        using var table = tensor(Table(format), device: codes.device);
        using var index = codes.to(ScalarType.Int64);
        return table[index];
    }

    static float[] Table(SafetensorsDType format) => format switch
    {
        SafetensorsDType.F8_E4M3 => E4M3Table,
        SafetensorsDType.F8_E5M2 => E5M2Table,
        _ => throw new ArgumentException($"{format} is not an FP8 format", nameof(format)),
    };

    static float[] BuildTable(int exponentBits, int mantissaBits, int bias, bool fn)
    {
        var t = new float[256];
        int expMax = (1 << exponentBits) - 1;
        for (int b = 0; b < 256; b++)
        {
            int sign = b >> 7;
            int e = (b >> mantissaBits) & expMax;
            int m = b & ((1 << mantissaBits) - 1);
            float v;
            if (fn && e == expMax && m == (1 << mantissaBits) - 1) v = float.NaN;       // E4M3FN: only S.1111.111 is NaN
            else if (!fn && e == expMax) v = m == 0 ? float.PositiveInfinity : float.NaN; // E5M2: IEEE-like
            else if (e == 0) v = m / (float)(1 << mantissaBits) * MathF.Pow(2, 1 - bias); // subnormal
            else v = (1 + m / (float)(1 << mantissaBits)) * MathF.Pow(2, e - bias);
            t[b] = sign == 1 ? -v : v;
        }
        return t;
    }
}
