using InferenceServer.Models.Files;

namespace InferenceServer.Tests.Cli;

/// <summary>
/// The writer every CLI file goes through. The /dev/full case feeds the kernel's own ENOSPC error through it (what a full
/// disk raises), without needing a mount; it proves the error handling and the clean-up, not where the temporary lives.
/// </summary>
public sealed class AtomicFileTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("atomic-file-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public void Writes_the_whole_file_and_leaves_no_temporary()
    {
        string path = Path.Combine(dir, "a.json");
        AtomicFile.WriteAllText(path, "{\"x\": 1}\n");
        AtomicFile.WriteAllText(path, "{\"x\": 2}\n"); // replaces
        Assert.Equal("{\"x\": 2}\n", File.ReadAllText(path));
        Assert.Equal(["a.json"], Directory.GetFiles(dir).Select(Path.GetFileName));
    }

    [Fact]
    public void A_failure_part_way_keeps_the_old_file_and_deletes_the_temporary()
    {
        string path = Path.Combine(dir, "tokenizer.json");
        File.WriteAllText(path, "old");
        var e = Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s =>
        {
            s.Write(new byte[100_000]);
            throw new InvalidOperationException("producer failed");
        }));
        Assert.Equal("producer failed", e.Message);
        Assert.Equal("old", File.ReadAllText(path));
        Assert.Equal(["tokenizer.json"], Directory.GetFiles(dir).Select(Path.GetFileName));
    }

    [Fact]
    public void The_kernels_no_space_error_names_the_final_file_and_leaves_nothing()
    {
        if (!File.Exists("/dev/full")) return; // Linux only
        string path = Path.Combine(dir, "out.png");
        var e = Assert.Throws<IOException>(() => AtomicFile.Write(path, s =>
        {
            // The bytes go nowhere useful: the point is the real ENOSPC IOException raised inside a write.
            using var full = new FileStream("/dev/full", FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1);
            full.Write(new byte[4096]);
        }));
        Assert.Contains("No space left on device", e.Message);
        Assert.Empty(Directory.GetFiles(dir));
    }

    [Fact]
    public void A_copy_is_complete_or_absent()
    {
        string src = Path.Combine(dir, "src.bin"), dst = Path.Combine(dir, "sub-missing", "dst.bin");
        File.WriteAllBytes(src, [1, 2, 3]);
        Assert.ThrowsAny<IOException>(() => AtomicFile.Copy(src, dst)); // no such folder: nothing created
        Assert.False(Directory.Exists(Path.GetDirectoryName(dst)));
        dst = Path.Combine(dir, "dst.bin");
        AtomicFile.Copy(src, dst);
        Assert.Equal([1, 2, 3], File.ReadAllBytes(dst));
    }
}
