using System.Diagnostics;

namespace InferenceServer.Reliability;

/// <summary>
/// A small filesystem to fill: a tmpfs of the given size mounted on <see cref="Path"/> when the harness runs as root
/// and the kernel allows it (<c>mount -t tmpfs -o size=N</c>); otherwise <see cref="Available"/> is false and the disk
/// cases report "skipped: no tmpfs" (a plain directory cannot be made to run out of space).
/// </summary>
public sealed class SmallDisk : IAsyncDisposable
{
    public string Path { get; }
    public bool Available { get; private set; }
    public string Why { get; private set; } = "";

    SmallDisk(string path) => Path = path;

    public static async Task<SmallDisk> CreateAsync(string path, long bytes)
    {
        var disk = new SmallDisk(path);
        Directory.CreateDirectory(path);
        var (code, text) = await RunAsync("mount", "-t", "tmpfs", "-o", $"size={bytes}", "tmpfs", path).ConfigureAwait(false);
        disk.Available = code == 0;
        disk.Why = code == 0 ? "" : $"skipped: no tmpfs (mount: {text.Trim()})";
        return disk;
    }

    /// <summary>Fills the filesystem with one file until a write fails (ENOSPC), leaving <paramref name="leave"/> bytes or fewer free.</summary>
    public void Fill(long leave = 0)
    {
        var free = new DriveInfo(Path).AvailableFreeSpace;
        using var s = new FileStream(System.IO.Path.Combine(Path, "filler"), FileMode.Create);
        var block = new byte[4096];
        try
        {
            for (long written = 0; written + block.Length <= free - leave; written += block.Length) s.Write(block);
            if (leave == 0) while (true) { s.Write(block); s.Flush(); }
        }
        catch (IOException) { }   // full: what we wanted
    }

    public void Empty()
    {
        foreach (var f in Directory.GetFiles(Path)) File.Delete(f);
        foreach (var d in Directory.GetDirectories(Path)) Directory.Delete(d, recursive: true);
    }

    static async Task<(int, string)> RunAsync(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            string err = await p.StandardError.ReadToEndAsync().ConfigureAwait(false);
            await p.WaitForExitAsync().ConfigureAwait(false);
            return (p.ExitCode, err);
        }
        catch (System.ComponentModel.Win32Exception e) { return (-1, e.Message); }
    }

    public async ValueTask DisposeAsync()
    {
        if (Available) await RunAsync("umount", "-l", Path).ConfigureAwait(false);
        Available = false;
    }
}
