using InferenceServer.Server.Lora;

namespace InferenceServer.Tests.Lora;

/// <summary>The pure rules: <c>NAME_OR_FILE[:SCALE]</c> parsing and which request names count as plain adapter names.</summary>
public sealed class LoraSpecTests
{
    [Theory]
    [InlineData("style", "style", 1.0)]
    [InlineData("style:0.5", "style", 0.5)]
    [InlineData("style:-1", "style", -1.0)]
    [InlineData("/loras/a.safetensors:2", "/loras/a.safetensors", 2.0)]
    [InlineData("/loras/a:b.safetensors", "/loras/a:b.safetensors", 1.0)]   // a ':' not followed by a number belongs to the path
    [InlineData(" style:1e-1 ", "style", 0.1)]
    public void Parses_name_or_file_and_scale(string text, string name, double scale) =>
        Assert.Equal(new LoraSpec(name, scale), LoraSpec.Parse(text));

    [Theory]
    [InlineData("")]
    [InlineData("style:NaN")]
    [InlineData("style:Infinity")]
    public void Refuses_an_empty_name_or_a_scale_that_is_not_finite(string text) =>
        Assert.Throws<ArgumentException>(() => LoraSpec.Parse(text));

    [Theory]
    [InlineData("style", true)]
    [InlineData("my style v2", true)]
    [InlineData("aquarelle-ü", true)]
    [InlineData("", false)]
    [InlineData(".hidden", false)]
    [InlineData("..", false)]
    [InlineData("../style", false)]
    [InlineData("sub/style", false)]
    [InlineData("sub\\style", false)]
    [InlineData("/etc/passwd", false)]
    [InlineData("c:style", false)]
    [InlineData(" style", false)]
    [InlineData("sty\nle", false)]
    public void Only_plain_file_names_name_adapters(string name, bool plain) => Assert.Equal(plain, LoraFolder.IsPlainName(name));

    [Fact]
    public void The_folder_lists_safetensors_files_by_name_and_resolves_only_plain_names()
    {
        string dir = Directory.CreateTempSubdirectory("lora-folder-").FullName;
        try
        {
            File.WriteAllBytes(Path.Combine(dir, "b.safetensors"), new byte[3]);
            File.WriteAllBytes(Path.Combine(dir, "a.safetensors"), new byte[5]);
            File.WriteAllBytes(Path.Combine(dir, "notes.txt"), new byte[1]);
            File.WriteAllBytes(Path.Combine(dir, ".hidden.safetensors"), new byte[1]);
            Directory.CreateDirectory(Path.Combine(dir, "sub"));
            File.WriteAllBytes(Path.Combine(dir, "sub", "c.safetensors"), new byte[1]);
            Assert.Equal([("a", 5L), ("b", 3L)], LoraFolder.List(dir).Select(e => (e.Name, e.Bytes)));
            Assert.Equal(Path.Combine(dir, "a.safetensors"), LoraFolder.PathOf(dir, "a"));
            Assert.Null(LoraFolder.PathOf(dir, "sub/c"));
            Assert.Null(LoraFolder.PathOf(dir, "missing"));
            Assert.Empty(LoraFolder.List(Path.Combine(dir, "none")));
            Assert.Equal(Path.Combine(dir, "b.safetensors"), new LoraSpec("b", 1).Resolve(dir));
            Assert.Throws<FileNotFoundException>(() => new LoraSpec("missing", 1).Resolve(dir));
            Assert.Throws<ArgumentException>(() => new LoraSpec("b", 1).Resolve(null));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
