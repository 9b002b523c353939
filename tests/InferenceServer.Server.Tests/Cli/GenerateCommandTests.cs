using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Server.Cli;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Cli;

/// <summary><c>generate</c> / <c>edit</c> on a tiny random model folder written by <c>random-checkpoint</c> itself.</summary>
[Collection(SpectreConsole.Name)]
public sealed class GenerateCommandTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("generate-cli-").FullName;
    string Model => Path.Combine(dir, "model");

    public GenerateCommandTests()
    {
        Assert.Equal(0, Invoke("random-checkpoint", "--preset", "tiny", "--layout", "diffusers", "--out", Model, "--dtype", "fp32", "--seed", "2").Rc);
    }

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static (int Rc, string Err) Invoke(params string[] args) => Cli.Invoke(args);

    [Fact]
    public void Generate_writes_n_files_and_edit_uses_them_as_references()
    {
        string outFile = Path.Combine(dir, "out", "cat.png");
        var (rc, err) = Invoke("generate", "--model", Model, "--prompt", "a cat", "--size", "80x64", "--n", "2", "--seed", "5", "--steps", "1", "--dtype", "fp32", "--out", outFile);
        Assert.True(rc == 0, err);
        foreach (var f in new[] { "cat-0.png", "cat-1.png" }) Assert.True(File.Exists(Path.Combine(dir, "out", f)), f);
        Assert.False(File.Exists(outFile));

        string edited = Path.Combine(dir, "out", "edit.jpeg");
        (rc, err) = Invoke("edit", "--model", Model, "--prompt", "make it blue", "--image", Path.Combine(dir, "out", "cat-0.png"), "--image", Path.Combine(dir, "out", "cat-1.png"),
            "--aspect-ratio", "1:1", "--resolution", "1K", "--steps", "1", "--seed", "1", "--format", "jpeg", "--quality", "80", "--dtype", "fp32", "--out", edited);
        Assert.True(rc == 0, err);
        var bytes = File.ReadAllBytes(edited);
        Assert.True(bytes[0] == 0xFF && bytes[1] == 0xD8, "not a JPEG");
    }

    [Fact]
    public void Bad_input_gives_a_non_zero_exit_and_one_line()
    {
        string outFile = Path.Combine(dir, "x.png");
        var cases = new (string[] Args, string Expected)[]
        {
            (["generate", "--model", Model, "--prompt", "p", "--size", "10x10", "--out", outFile], "64 to 4096"),
            (["generate", "--model", Model, "--prompt", "p", "--image", Path.Combine(dir, "nope.png"), "--out", outFile], "no such file"),
            (["generate", "--model", Path.Combine(dir, "missing"), "--prompt", "p", "--out", outFile], "no such model folder"),
            (["generate", "--model", Model, "--prompt", "p", "--format", "gif", "--out", outFile], "format 'gif'"),
            (["edit", "--model", Model, "--prompt", "p", "--out", outFile], "--image"),
        };
        foreach (var (args, expected) in cases)
        {
            var (rc, err) = Invoke(args);
            Assert.NotEqual(0, rc);
            Assert.Contains(expected, err);
            Assert.Single(err.Trim().Split('\n'));
        }
        Assert.False(File.Exists(outFile));
    }
}

/// <summary>Spectre.Console refuses two live progress displays at once: the verbs that draw one run one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SpectreConsole
{
    public const string Name = "Spectre console";
}
