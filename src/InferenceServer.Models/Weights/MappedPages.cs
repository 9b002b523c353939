using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// Maps a memory-mapped tensor's pages into the process in one system call (Linux 5.14+ <c>MADV_POPULATE_READ</c>) instead
/// of a page fault every few pages at first touch: reading from the page cache (or the disk, cold) is the same, the
/// per-fault cost is not paid. Best effort: where the kernel refuses, the first read faults the pages in as usual.
/// </summary>
internal static class MappedPages
{
    const int MadvPopulateRead = 22;
    const long Slice = 1L << 30; // Tensor.bytes is an int-sized span
    static readonly long PageSize = Environment.SystemPageSize;

    public static unsafe void Populate(Tensor t)
    {
        if (!OperatingSystem.IsLinux() || t.numel() == 0) return;
        using var flat = t.view(-1);
        long perSlice = Slice / flat.element_size();
        for (long first = 0; first < flat.numel(); first += perSlice)
        {
            using var part = flat.narrow(0, first, Math.Min(perSlice, flat.numel() - first));
            var bytes = part.bytes;
            fixed (byte* p = bytes)
            {
                long start = (long)p & ~(PageSize - 1); // madvise wants a page-aligned start
                _ = madvise((nint)start, (nuint)((long)p + bytes.Length - start), MadvPopulateRead);
            }
        }
    }

    [DllImport("libc", EntryPoint = "madvise", SetLastError = true)]
    static extern int madvise(nint address, nuint length, int advice);
}
