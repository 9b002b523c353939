using InferenceServer.Models;
using InferenceServer.Models.Lora;
using InferenceServer.Pipeline.Generation;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Cli;

/// <summary>
/// <c>random-lora</c> writes adapters for a model folder that <c>generate --lora</c> accepts (as a file or a name in
/// <c>--lora-dir</c>, with a scale); the same seed in two layouts gives the same image; bad adapters and bad input exit 2
/// with one <c>error:</c> line.
/// </summary>
[Collection(SpectreConsole.Name)]
public sealed class LoraCommandTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("lora-cli-").FullName;
    string Model => Path.Combine(dir, "model");
    string Loras => Path.Combine(dir, "loras");

    public LoraCommandTests()
    {
        Assert.Equal(0, Cli.Invoke("random-checkpoint", "--preset", "tiny", "--out", Model, "--dtype", "fp32", "--seed", "4").Rc);
    }

    public void Dispose() => Directory.Delete(dir, recursive: true);

    (int Rc, string Err) Generate(string outName, params string[] extra) =>
        Cli.Invoke(["generate", "--model", Model, "--prompt", "a cat", "--size", "64x64", "--steps", "2", "--seed", "3", "--dtype", "fp32",
            "--out", Path.Combine(dir, outName), .. extra]);

    [Fact]
    public void Random_lora_writes_adapters_that_generate_accepts_by_file_and_by_name()
    {
        string kohya = Path.Combine(Loras, "cat-kohya.safetensors");
        var (rc, output, err) = Cli.InvokeWithOutput("random-lora", "--model", Model, "--rank", "3", "--seed", "8", "--format", "kohya", "--dtype", "f32", "--out", kohya);
        Assert.True(rc == 0, err);
        Assert.Contains("rank 3", output);
        Assert.Contains($"({new FileInfo(kohya).Length:N0} bytes)", output);
        (rc, output, err) = Cli.InvokeWithOutput("random-lora", "--model", Model, "--rank", "3", "--seed", "8", "--format", "bfl", "--dtype", "f32",
            "--targets", "attention", "--out", Path.Combine(Loras, "cat-attn.safetensors"));
        Assert.True(rc == 0, err);
        Assert.Equal(0, Cli.Invoke("random-lora", "--model", Model, "--rank", "3", "--seed", "8", "--format", "bfl", "--dtype", "f32", "--out", Path.Combine(Loras, "cat-bfl.safetensors")).Rc);

        // Every adapted linear for "all", fewer for "attention"; the files read back as the formats they were written in.
        using (var backend = ModelFamilies.Load(Model, new ModelLoadOptions(ScalarType.Float32)))
        {
            using var all = LoraAdapter.Load(kohya, backend.Lora.Targets, ScalarType.Float32);
            using var attention = LoraAdapter.Load(Path.Combine(Loras, "cat-attn.safetensors"), backend.Lora.Targets, ScalarType.Float32);
            Assert.Equal(("kohya", backend.Lora.Targets.Layers.Count), (all.Format, all.Targets));
            Assert.Equal([3L], all.Ranks);
            Assert.True(attention.Targets < all.Targets, $"{attention.Targets} attention targets of {all.Targets}");
            Assert.Contains($"{attention.Targets} of {backend.Lora.Targets.Layers.Count} adaptable linears", output);
        }

        Assert.True(Generate("plain.png").Rc == 0);
        var (grc, gerr) = Generate("kohya.png", "--lora", kohya + ":0.8");
        Assert.True(grc == 0, gerr);
        (grc, gerr) = Generate("bfl.png", "--lora", "cat-bfl:0.8", "--lora-dir", Loras);
        Assert.True(grc == 0, gerr);
        byte[] plain = File.ReadAllBytes(Path.Combine(dir, "plain.png"));
        byte[] fromKohya = File.ReadAllBytes(Path.Combine(dir, "kohya.png"));
        Assert.NotEqual(plain, fromKohya);
        Assert.Equal(fromKohya, File.ReadAllBytes(Path.Combine(dir, "bfl.png")));       // same seed, two layouts: one adapter
    }

    [Fact]
    public void A_bad_adapter_or_bad_input_exits_2_with_one_error_line()
    {
        Directory.CreateDirectory(Loras);
        string broken = Path.Combine(Loras, "broken.safetensors");
        File.WriteAllText(broken, "not a safetensors file");
        var cases = new (string[] Args, string Expected)[]
        {
            (["generate", "--model", Model, "--prompt", "p", "--size", "64x64", "--steps", "1", "--lora", broken, "--out", Path.Combine(dir, "x.png")], "adapter 'broken'"),
            (["generate", "--model", Model, "--prompt", "p", "--lora", "nope", "--lora-dir", Loras, "--out", Path.Combine(dir, "x.png")], "no nope.safetensors"),
            (["generate", "--model", Model, "--prompt", "p", "--lora", "nope", "--out", Path.Combine(dir, "x.png")], "--lora-dir"),
            (["generate", "--model", Model, "--prompt", "p", "--lora", Path.Combine(dir, "missing.safetensors"), "--out", Path.Combine(dir, "x.png")], "no such file"),
            (["random-lora", "--model", Model, "--rank", "0", "--format", "bfl", "--out", Path.Combine(dir, "r.safetensors")], "--rank 0"),
            (["random-lora", "--model", Path.Combine(dir, "missing"), "--rank", "2", "--format", "bfl", "--out", Path.Combine(dir, "r.safetensors")], "no such model folder"),
        };
        foreach (var (args, expected) in cases)
        {
            var (rc, err) = Cli.Invoke(args);
            Assert.True(rc == 2, $"{string.Join(' ', args)}: exit {rc}, {err}");
            Assert.StartsWith("error: ", err);
            Assert.Contains(expected, err);
            Assert.Single(err.Trim().Split('\n'));
        }
        Assert.False(File.Exists(Path.Combine(dir, "x.png")));
        Assert.False(File.Exists(Path.Combine(dir, "r.safetensors")));
    }
}
