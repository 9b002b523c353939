using System.Runtime.InteropServices;

namespace InferenceServer.Models.Weights;

/// <summary>
/// Whether CPU weights may be memory maps of their checkpoint files instead of copies (zero-copy: the page cache is the
/// model's memory, a warm restart costs no copy, and a replica on a machine whose RAM cannot hold both the model and its
/// files still starts warm). A mapped file that shrinks while mapped (truncated, or overwritten in place) kills the
/// process with SIGBUS at the next read of a lost page: no runtime can turn that into an error. So maps are used only
/// where the file cannot change.
/// </summary>
public enum WeightMapping
{
    /// <summary>Map files on a read-only filesystem (a read-only volume or bind mount, where nothing can truncate them); copy the rest.</summary>
    Auto,
    /// <summary>Map every file: for model folders nothing modifies while the process runs (replace files by renaming a new one over them, never in place).</summary>
    On,
    /// <summary>Always copy into the process's own memory (a file changed later cannot harm it).</summary>
    Off,
}

/// <summary>Parsing and the read-only check behind <see cref="WeightMapping.Auto"/>.</summary>
public static class WeightMappings
{
    public static readonly string[] Names = ["auto", "on", "off"];

    public static WeightMapping Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "auto" => WeightMapping.Auto,
        "on" or "true" => WeightMapping.On,
        "off" or "false" => WeightMapping.Off,
        _ => throw new ArgumentException($"mmap '{name}': expected auto, on or off"),
    };

    /// <summary>True when <paramref name="mapping"/> allows mapping <paramref name="path"/>: On, or Auto on a read-only filesystem.</summary>
    public static bool Allows(this WeightMapping mapping, string path) => mapping switch
    {
        WeightMapping.On => true,
        WeightMapping.Auto => IsOnReadOnlyFilesystem(path),
        _ => false,
    };

    /// <summary>True when the filesystem holding <paramref name="path"/> is mounted read-only (statvfs ST_RDONLY); false where unknown.</summary>
    public static bool IsOnReadOnlyFilesystem(string path)
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.OSArchitecture is not (Architecture.X64 or Architecture.Arm64)) return false;
        // struct statvfs on 64-bit glibc: 11 unsigned longs (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax) + spare.
        var buffer = new ulong[16];
        return statvfs(path, buffer) == 0 && (buffer[9] & StRdOnly) != 0;
    }

    const ulong StRdOnly = 1;

    [DllImport("libc", EntryPoint = "statvfs", SetLastError = true)]
    static extern int statvfs([MarshalAs(UnmanagedType.LPUTF8Str)] string path, [Out] ulong[] buffer);
}
