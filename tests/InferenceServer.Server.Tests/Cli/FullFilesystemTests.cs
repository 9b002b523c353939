using System.Diagnostics;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Cli;

/// <summary>
/// Issue 14 items 11 and 12 on a real full filesystem: a size-limited tmpfs mounted for the test (needs root, as in this
/// project's CI container). Every verb that writes ends with one <c>error:</c> line and exit code 2, and leaves no file
/// under a final name that is not complete (before: a stack trace, exit code 1, a 0-byte PNG or a truncated tokenizer.json).
/// Where mounting is not allowed these tests say so and stop; AtomicFileTests still drives the same path with
/// the kernel's ENOSPC from /dev/full.
/// </summary>
[Collection(SpectreConsole.Name)]
public sealed class FullFilesystemTests(TinyModelFolder tiny, ITestOutputHelper log) : IClassFixture<TinyModelFolder>, IDisposable
{
    const long Page = 4096;
    readonly string mountPoint = Directory.CreateTempSubdirectory("full-fs-").FullName;
    bool mounted;

    public void Dispose()
    {
        if (mounted) Run("umount", mountPoint);
        Directory.Delete(mountPoint, recursive: true);
    }

    /// <summary>Mounts a tmpfs of <paramref name="bytes"/> (rounded up to pages) at <see cref="mountPoint"/>; false where not allowed.</summary>
    bool Mount(long bytes)
    {
        mounted = Run("mount", "-t", "tmpfs", "-o", $"size={(bytes + Page - 1) / Page * Page}", "tmpfs", mountPoint) == 0;
        if (!mounted) log.WriteLine("cannot mount a tmpfs here (not root?): the full-filesystem path is covered by AtomicFileTests only");
        return mounted;
    }

    static int Run(string file, params string[] args)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true, RedirectStandardOutput = true })!;
            p.WaitForExit();
            return p.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception) { return -1; }
    }

    /// <summary>What a folder takes on a tmpfs: each file's pages (each folder is one more).</summary>
    static long Footprint(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Sum(f => (new FileInfo(f).Length + Page - 1) / Page * Page)
        + Page * (1 + Directory.EnumerateDirectories(dir, "*", SearchOption.AllDirectories).Count());

    static void AssertOneErrorLine(int rc, string err)
    {
        Assert.True(rc == 2, $"exit code {rc}: {err}");
        Assert.StartsWith("error: ", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.DoesNotContain("   at ", err);
        Assert.Contains("No space left on device", err);
    }

    /// <summary>Every file under <paramref name="written"/> is complete (same size as in <paramref name="reference"/>); no temporary is left.</summary>
    static void AssertOnlyCompleteFiles(string written, string reference)
    {
        foreach (var f in Directory.EnumerateFiles(written, "*", SearchOption.AllDirectories))
        {
            string rel = Path.GetRelativePath(written, f);
            Assert.DoesNotContain(".tmp-", rel);
            string r = Path.Combine(reference, rel);
            Assert.True(File.Exists(r), $"{rel}: not in the reference folder");
            Assert.True(new FileInfo(f).Length == new FileInfo(r).Length, $"{rel}: {new FileInfo(f).Length} bytes, complete is {new FileInfo(r).Length}");
        }
        Assert.False(File.Exists(Path.Combine(written, "inference-server.json")), "the marker is written last, so an incomplete folder has none");
    }

    [Fact]
    public void Generate_on_a_full_filesystem_leaves_no_png()
    {
        if (!Mount(1 << 20)) return;
        // Leave two pages: a 256x256 noise PNG (about 190 KB) cannot fit.
        File.WriteAllBytes(Path.Combine(mountPoint, "filler"), new byte[(1 << 20) - 2 * Page]);
        string png = Path.Combine(mountPoint, "out.png");
        var (rc, err) = Cli.Invoke("generate", "--model", tiny.Original, "--prompt", "a cat", "--size", "256x256", "--steps", "1", "--seed", "1", "--dtype", "fp32", "--out", png);
        AssertOneErrorLine(rc, err);
        Assert.Contains(png, err);
        Assert.Equal(["filler"], Directory.GetFiles(mountPoint).Select(Path.GetFileName));
    }

    [Fact]
    public void Random_checkpoint_on_a_full_filesystem_leaves_no_truncated_file_and_no_marker()
    {
        // 3 MB short of the whole folder: the tokenizer files (16 MB, copied after the weights) cannot all fit.
        if (!Mount(Footprint(tiny.Original) - (3 << 20))) return;
        string dst = Path.Combine(mountPoint, "model");
        var (rc, err) = Cli.Invoke("random-checkpoint", "--preset", "tiny", "--out", dst, "--dtype", "fp32", "--seed", "4");
        AssertOneErrorLine(rc, err);
        AssertOnlyCompleteFiles(dst, tiny.Original);
    }

    [Fact]
    public void Quantize_on_a_full_filesystem_leaves_no_truncated_copy_and_no_marker()
    {
        if (!Mount(Footprint(tiny.Original) - (3 << 20))) return;
        string dst = Path.Combine(mountPoint, "q");
        var (rc, err) = Cli.Invoke("quantize", "--to", "int8", tiny.Original, dst);
        AssertOneErrorLine(rc, err);
        AssertOnlyCompleteFiles(dst, tiny.Original);
    }
}
