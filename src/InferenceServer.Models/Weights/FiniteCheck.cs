using System.Numerics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// Whether a tensor holds only finite values, for checking weights as they load. On the CPU it scans the raw bits (a NaN or
/// an infinity is an all-ones exponent) with SIMD vectors: libtorch's CPU <c>isfinite</c> on bfloat16 measured 9 s per
/// 512 MB here (a whole klein-4B: minutes), this scan is memory-bound. On a GPU, torch's own reduction is used.
/// </summary>
public static class FiniteCheck
{
    /// <summary>Largest slice pinned at once (Tensor.bytes is an int-sized span).</summary>
    const long SliceBytes = 1L << 30;

    /// <summary>Bytes one thread scans at a time: large enough that scheduling is noise, small enough to spread a 50 MB weight.</summary>
    const int BlockBytes = 4 << 20;

    /// <summary>True when every element of <paramref name="t"/> is finite; integer and 8-bit code tensors always are.</summary>
    public static bool AllFinite(Tensor t)
    {
        if (!t.is_floating_point() || t.numel() == 0) return true;
        using var scope = NewDisposeScope(); // the temporaries below (isfinite's mask, views) go with it
        if (t.device_type != DeviceType.CPU || t.dtype is not (ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float32))
            return t.isfinite().all().item<bool>();
        var flat = t.contiguous().view(-1);
        long perSlice = SliceBytes / flat.element_size();
        for (long first = 0; first < flat.numel(); first += perSlice)
        {
            var slice = flat.narrow(0, first, Math.Min(perSlice, flat.numel() - first));
            bool finite = t.dtype switch
            {
                ScalarType.BFloat16 => Scan<ushort>(slice.bytes, 0x7F80),
                ScalarType.Float16 => Scan<ushort>(slice.bytes, 0x7C00),
                _ => Scan<uint>(slice.bytes, 0x7F80_0000u),
            };
            if (!finite) return false;
        }
        return true;
    }

    /// <summary>Scans memory in blocks on the thread pool (the scan is memory-bound; one core does not saturate it).</summary>
    static unsafe bool Scan<T>(Span<byte> bytes, T exponent) where T : unmanaged, IBinaryInteger<T>
    {
        fixed (byte* pinned = bytes)
        {
            byte* start = pinned; // a fixed local cannot be captured by the lambda
            int length = bytes.Length;
            int blocks = (length + BlockBytes - 1) / BlockBytes;
            int found = 0;
            Parallel.For(0, blocks, (b, state) =>
            {
                int offset = b * BlockBytes;
                if (!NoneAllOnes(new ReadOnlySpan<byte>(start + offset, Math.Min(BlockBytes, length - offset)), exponent))
                {
                    Volatile.Write(ref found, 1);
                    state.Stop();
                }
            });
            return found == 0;
        }
    }

    /// <summary>True when no element has every bit of <paramref name="exponent"/> set.</summary>
    static bool NoneAllOnes<T>(ReadOnlySpan<byte> bytes, T exponent) where T : unmanaged, IBinaryInteger<T>
    {
        var values = MemoryMarshal.Cast<byte, T>(bytes);
        var mask = new Vector<T>(exponent);
        int i = 0;
        for (; i <= values.Length - Vector<T>.Count; i += Vector<T>.Count)
            if (Vector.EqualsAny(new Vector<T>(values[i..]) & mask, mask)) return false;
        for (; i < values.Length; i++)
            if ((values[i] & exponent) == exponent) return false;
        return true;
    }
}
