using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace InferenceServer.Models.Weights;

/// <summary>The kernel's page cache as a load sees it (Linux; elsewhere nothing is known and nothing is dropped).</summary>
public static class PageCache
{
    /// <summary>Memory the kernel can give without swapping (MemAvailable of /proc/meminfo), in bytes; 0 when unknown.</summary>
    public static long AvailableBytes => Runtime.ProcessMemory.ProcKilobytes("/proc/meminfo", "MemAvailable") * 1024;

    /// <summary>
    /// True when <paramref name="fileBytes"/> of checkpoint files can stay cached next to a model copied from them (about
    /// as large): a later start then reads them from memory. False on a machine too small for both; true where memory is unknown.
    /// </summary>
    public static bool CanKeep(long fileBytes) => AvailableBytes is var available && (available == 0 || available >= 2 * fileBytes);

    /// <summary>Asks the kernel to drop the cached pages of a file range (POSIX_FADV_DONTNEED; length 0: to the end); best effort.</summary>
    internal static void Drop(SafeFileHandle file, long offset, long length)
    {
        if (OperatingSystem.IsLinux()) _ = posix_fadvise((int)file.DangerousGetHandle(), offset, length, FadvDontNeed);
    }

    const int FadvDontNeed = 4;

    [DllImport("libc", EntryPoint = "posix_fadvise")]
    static extern int posix_fadvise(int fd, long offset, long length, int advice);
}
