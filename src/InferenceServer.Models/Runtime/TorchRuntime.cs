using System.Runtime.InteropServices;
using TorchSharp;

namespace InferenceServer.Models.Runtime;

/// <summary>
/// Makes TorchSharp's native libraries loadable on this machine and initialises libtorch once per process.
/// Call <see cref="EnsureInitialized"/> before the first tensor is made (the CLI, the server and the test
/// assemblies do so at start).
/// </summary>
public static class TorchRuntime
{
    /// <summary>The native bridge TorchSharp P/Invokes into; it sits next to TorchSharp.dll in the output folder.</summary>
    public const string BridgeFileName = "libLibTorchSharp.so";

    static readonly object Gate = new();
    static bool initialized;

    /// <summary>Versions marked weak in this process's copy of the bridge (empty when nothing needed it).</summary>
    public static IReadOnlyList<string> PatchedVersions { get; private set; } = [];

    /// <summary>Patches the native bridge if the system libstdc++ lacks a version it asks for, then loads libtorch.</summary>
    public static void EnsureInitialized()
    {
        lock (Gate)
        {
            if (initialized) return;
            EnableHugePages();
            PatchBridgeOnce();
            torch.InitializeDeviceType(DeviceType.CPU);
            initialized = true;
        }
    }

    static bool bridgeChecked;
    static bool? cuda;

    /// <summary>
    /// Loads libtorch's CUDA backend (after the bridge check of <see cref="EnsureInitialized"/>) and says whether a CUDA
    /// device is usable; false, not an error, on a CPU-only libtorch or a machine without a GPU. Tried once per process.
    /// TorchSharp finds <c>libtorch_cuda.so</c> by name (dlopen: the application folder, then <c>LD_LIBRARY_PATH</c>);
    /// a PyTorch install's <c>torch/lib</c> on <c>LD_LIBRARY_PATH</c> serves (see bench/gpu/README.md).
    /// </summary>
    public static bool TryInitializeCuda()
    {
        lock (Gate)
        {
            if (cuda is { } known) return known;
            EnableHugePages();
            PatchBridgeOnce();
            bool ok;
            try { ok = torch.TryInitializeDeviceType(DeviceType.CUDA); }
            catch (Exception e) when (e is NotSupportedException or InvalidOperationException or DllNotFoundException) { ok = false; }
            cuda = ok;
            return ok;
        }
    }

    /// <summary>Like <see cref="TryInitializeCuda"/>, but a missing CUDA backend is an error carrying TorchSharp's load trace.</summary>
    public static void InitializeCuda()
    {
        if (TryInitializeCuda()) return;
        throw new InvalidOperationException(
            "CUDA is not available: the loaded libtorch has no CUDA backend (libtorch_cuda.so) or sees no GPU. Put a CUDA libtorch " +
            "(e.g. a PyTorch install's torch/lib) on LD_LIBRARY_PATH, or use --device cpu. LD_LIBRARY_PATH=" +
            (Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") ?? "(unset)"));
    }

    /// <summary>The environment variable libtorch's CPU allocator reads once, at its first allocation.</summary>
    public const string HugePagesVariable = "THP_MEM_ALLOC_ENABLE";

    /// <summary>True when libtorch's CPU allocations of 2 MB and more ask for transparent huge pages (see <see cref="EnableHugePages"/>).</summary>
    public static bool HugePages => OperatingSystem.IsLinux() && Marshal.PtrToStringUTF8(getenv(HugePagesVariable)) is { } v && v.Trim() is not ("" or "0");

    /// <summary>
    /// Asks libtorch to back CPU tensors of 2 MB and more with transparent huge pages (its allocator aligns them to 2 MB
    /// and calls madvise). Filling fresh memory costs one page fault per 4 KB page otherwise: loading klein-4B's 7.2 GB
    /// transformer measured 15 s of faults here, 1.4 s with huge pages. Set before the first tensor is allocated (libtorch reads it
    /// once); a value the user already set (e.g. 0 to opt out) is kept. The native environment is written: .NET's own
    /// copy of it is not what libtorch reads.
    /// </summary>
    static void EnableHugePages()
    {
        if (!OperatingSystem.IsLinux() || getenv(HugePagesVariable) != IntPtr.Zero) return;
        _ = setenv(HugePagesVariable, "1", 0);
    }

    [DllImport("libc", EntryPoint = "getenv")]
    static extern IntPtr getenv([MarshalAs(UnmanagedType.LPUTF8Str)] string name);

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int setenv([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);

    static void PatchBridgeOnce()
    {
        if (bridgeChecked) return;
        if (OperatingSystem.IsLinux())
        {
            string dir = Path.GetDirectoryName(typeof(torch).Assembly.Location) ?? AppContext.BaseDirectory;
            string bridge = Path.Combine(dir, BridgeFileName);
            string? libstdcxx = FindSystemLibstdcxx();
            if (File.Exists(bridge) && libstdcxx is not null)
                PatchedVersions = RelaxMissingLibstdcxxVersions(bridge, libstdcxx);
        }
        bridgeChecked = true;
    }

    /// <summary>
    /// Marks weak every libstdc++ version that <paramref name="bridgePath"/> needs and <paramref name="libstdcxxPath"/>
    /// does not define. The file is rewritten through a temporary file and a rename, so a hard link to the NuGet cache
    /// is replaced, never written through. Returns the versions changed (none when the file is already fine).
    /// </summary>
    public static IReadOnlyList<string> RelaxMissingLibstdcxxVersions(string bridgePath, string libstdcxxPath)
    {
        var defined = ElfVersionNeeds.ReadDefinitions(File.ReadAllBytes(libstdcxxPath), libstdcxxPath);
        byte[] bytes = File.ReadAllBytes(bridgePath);
        var changed = ElfVersionNeeds.MarkWeak(bytes,
            n => n.Library.StartsWith("libstdc++", StringComparison.Ordinal) && !defined.Contains(n.Version), bridgePath);
        if (changed.Count == 0) return changed;

        string temp = $"{bridgePath}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            File.WriteAllBytes(temp, bytes);
            File.SetUnixFileMode(temp, File.GetUnixFileMode(bridgePath));
            File.Move(temp, bridgePath, overwrite: true);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new InvalidOperationException(
                $"{bridgePath} needs {string.Join(", ", changed)}, which {libstdcxxPath} lacks, and its folder is not writable " +
                "to mark them weak. Run once with write access to that folder, or install a newer libstdc++.", e);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
        return changed;
    }

    static string? FindSystemLibstdcxx()
    {
        string[] candidates =
        [
            "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6",
            "/usr/lib/libstdc++.so.6",
        ];
        return candidates.FirstOrDefault(File.Exists);
    }
}
