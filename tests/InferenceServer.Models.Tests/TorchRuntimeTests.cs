using InferenceServer.Models.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests;

public class TorchRuntimeTests
{
    [Fact]
    public void Libtorch_runs_a_matmul()
    {
        using var scope = NewDisposeScope();
        var a = ones(2, 2);
        var b = tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2);
        var c = a.matmul(b);
        Assert.Equal(new float[] { 4, 6, 4, 6 }, c.data<float>().ToArray());
    }

    [Fact]
    public void Bridge_in_output_folder_has_no_unsatisfiable_libstdcxx_requirement()
    {
        string bridge = Path.Combine(Path.GetDirectoryName(typeof(torch).Assembly.Location)!, TorchRuntime.BridgeFileName);
        var defined = ElfVersionNeeds.ReadDefinitions(File.ReadAllBytes("/lib/x86_64-linux-gnu/libstdc++.so.6"));
        var needs = ElfVersionNeeds.ReadNeeds(File.ReadAllBytes(bridge));
        Assert.Contains(needs, n => n.Library == "libstdc++.so.6");
        Assert.All(needs.Where(n => n.Library == "libstdc++.so.6" && !defined.Contains(n.Version)), n => Assert.True(n.IsWeak, n.Version));
    }

    [Fact]
    public void Patching_marks_only_missing_versions_weak_and_replaces_the_file_instead_of_writing_through_links()
    {
        string dir = Directory.CreateTempSubdirectory("elf-patch").FullName;
        try
        {
            // Start from the unpatched bridge in the NuGet cache when it is there, else from the output copy.
            string bridge = Path.Combine(Path.GetDirectoryName(typeof(torch).Assembly.Location)!, TorchRuntime.BridgeFileName);
            byte[] original = File.ReadAllBytes(bridge);
            // Clear the weak bit so the test exercises the patch whatever state the output copy is in.
            foreach (var need in ElfVersionNeeds.ReadNeeds(original).Where(n => n.IsWeak))
                original[need.FlagsOffset] &= unchecked((byte)~0x2);
            string copy = Path.Combine(dir, TorchRuntime.BridgeFileName);
            File.WriteAllBytes(copy, original);
            string link = Path.Combine(dir, "hardlink.so");
            Assert.Equal(0, Link(copy, link));

            var defined = ElfVersionNeeds.ReadDefinitions(File.ReadAllBytes("/lib/x86_64-linux-gnu/libstdc++.so.6"));
            var missing = ElfVersionNeeds.ReadNeeds(original).Where(n => n.Library == "libstdc++.so.6" && !defined.Contains(n.Version)).Select(n => n.Version).ToList();
            Assert.NotEmpty(missing); // Debian 12: GLIBCXX_3.4.32

            var changed = TorchRuntime.RelaxMissingLibstdcxxVersions(copy, "/lib/x86_64-linux-gnu/libstdc++.so.6");
            Assert.Equal(missing.Order(), changed.Order());

            var after = ElfVersionNeeds.ReadNeeds(File.ReadAllBytes(copy));
            Assert.All(after.Where(n => missing.Contains(n.Version)), n => Assert.True(n.IsWeak));
            Assert.All(after.Where(n => !missing.Contains(n.Version)), n => Assert.False(n.IsWeak, n.Version));
            // Exactly the flag bytes changed.
            byte[] patched = File.ReadAllBytes(copy);
            Assert.Equal(original.Length, patched.Length);
            Assert.Equal(missing.Count, Enumerable.Range(0, original.Length).Count(i => original[i] != patched[i]));
            // The hard link still holds the original bytes: the patch replaced the file, it did not write through.
            Assert.Equal(original, File.ReadAllBytes(link));
            // Idempotent.
            Assert.Empty(TorchRuntime.RelaxMissingLibstdcxxVersions(copy, "/lib/x86_64-linux-gnu/libstdc++.so.6"));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Truncated_or_foreign_files_give_a_clear_error()
    {
        var e1 = Assert.Throws<InvalidDataException>(() => ElfVersionNeeds.ReadNeeds(new byte[] { 1, 2, 3 }, "x.so"));
        Assert.Contains("x.so", e1.Message);
        string bridge = Path.Combine(Path.GetDirectoryName(typeof(torch).Assembly.Location)!, TorchRuntime.BridgeFileName);
        byte[] head = File.ReadAllBytes(bridge)[..4096];
        Assert.Throws<InvalidDataException>(() => ElfVersionNeeds.ReadNeeds(head, "cut.so"));
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "link", SetLastError = true)]
    static extern int Link(string oldPath, string newPath);
}
