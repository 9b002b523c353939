using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// FP8 (OCP E4M3FN and E5M2) decoding and encoding. TorchSharp 0.107 has no float8 scalar types, so FP8 bytes are
/// kept as uint8 tensors and decoded through a 256-entry table (one gather, on any device).
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

    /// <summary>
    /// Encodes a floating-point tensor as FP8 codes (uint8, same shape, same device), rounding to nearest, ties to
    /// even. E4M3FN has no infinity: values beyond ±448 (and ±inf) saturate to ±448. E5M2 follows IEEE: values from
    /// 61440 up round to ±inf. NaN becomes the code 0x7F (a NaN in both formats); -0 keeps its sign.
    /// </summary>
    public static Tensor Encode(Tensor values, SafetensorsDType format)
    {
        if (!values.is_floating_point()) throw new ArgumentException($"FP8 encoding needs a floating-point tensor, got {values.dtype}", nameof(values));
        var grid = Grid(format);
        var result = empty(values.shape, ScalarType.Byte, values.device);
        using var flatOut = result.view(-1);
        using var flatIn = values.reshape(-1);
        using var table = tensor(grid, device: values.device);
        const long chunk = 1 << 22; // bounds the int64 temporaries to 32 MB each
        for (long start = 0; start < flatIn.numel(); start += chunk)
        {
            using var scope = NewDisposeScope();
            long n = Math.Min(chunk, flatIn.numel() - start);
            var x = flatIn.narrow(0, start, n).to(ScalarType.Float32);
            var a = x.abs();
            // The two grid points around |x|; the grid index is the magnitude's code, so "even index" is "even mantissa".
            var hi = searchsorted(table, a).clamp_max(grid.Length - 1);
            var lo = (hi - 1).clamp_min(0);
            var below = a - table[lo];
            var above = table[hi] - a;
            var pickHi = above.lt(below).logical_or(above.eq(below).logical_and(hi.remainder(2).eq(0)));
            var code = where(pickHi, hi, lo);
            code = where(x.signbit(), code + 0x80, code);
            code = where(x.isnan(), full_like(code, 0x7F), code);
            flatOut.narrow(0, start, n).copy_(code);
        }
        return result;
    }

    /// <summary>Encodes one value (see <see cref="Encode(Tensor, SafetensorsDType)"/>).</summary>
    public static byte Encode(float value, SafetensorsDType format)
    {
        using var t = tensor(new[] { value });
        using var c = Encode(t, format);
        return c[0].item<byte>();
    }

    /// <summary>
    /// Non-negative magnitudes in code order (index = code): every finite value, plus for E5M2 the infinity code
    /// placed at 65536, the next point of the grid, so that rounding overflows to it exactly as IEEE does.
    /// </summary>
    static float[] Grid(SafetensorsDType format) => format switch
    {
        SafetensorsDType.F8_E4M3 => E4M3Table[..0x7F],
        SafetensorsDType.F8_E5M2 => [.. E5M2Table[..0x7C], 65536f],
        _ => throw new ArgumentException($"{format} is not an FP8 format", nameof(format)),
    };

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
