using InferenceServer.Models.Flux2;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Cli;

/// <summary>
/// Issue 14 items 11, 13, 14: a damaged model folder ends <c>generate</c> with one <c>error:</c> line naming the file at
/// fault and exit code 2 (before: an unhandled exception, its stack trace and exit code 1, or a black image and exit 0).
/// </summary>
[Collection(SpectreConsole.Name)]
public sealed class CorruptModelFolderTests(TinyModelFolder tiny, ITestOutputHelper log) : IClassFixture<TinyModelFolder>
{
    static (int Rc, string Err) Generate(string model, string outFile) =>
        Cli.Invoke("generate", "--model", model, "--prompt", "a cat", "--size", "64x64", "--steps", "1", "--seed", "1", "--dtype", "fp32", "--out", outFile);

    /// <summary>Damages a copy with <paramref name="damage"/>, runs generate, and checks the one-line refusal naming <paramref name="expected"/>.</summary>
    string Refused(Action<string> damage, params string[] expected)
    {
        string model = tiny.Copy(out string parent);
        try
        {
            damage(model);
            string png = Path.Combine(parent, "out.png");
            var (rc, err) = Generate(model, png);
            log.WriteLine(err);
            Assert.True(rc == 2, $"exit code {rc}: {err}");
            Assert.StartsWith("error: ", err);
            Assert.Single(err.Trim().Split('\n'));
            Assert.DoesNotContain("   at ", err);
            foreach (var e in expected) Assert.Contains(e, err);
            Assert.False(File.Exists(png));
            return err;
        }
        finally { Directory.Delete(parent, recursive: true); }
    }

    [Theory]
    [InlineData("inference-server.json", "{ not json")]
    [InlineData("inference-server.json", "[1, 2]")]
    [InlineData("inference-server.json", "{\"model_card\": 42}")]
    [InlineData("tokenizer/tokenizer_config.json", "garbage")]
    [InlineData("tokenizer/tokenizer_config.json", "{\"added_tokens_decoder\": {}}")]
    [InlineData("tokenizer/merges.txt", "#version: 0.2\nonlyonetoken\n\u0000\u0001 garbage here too\n")]
    [InlineData("tokenizer/vocab.json", "")]
    [InlineData("tokenizer/vocab.json", "{\"!\": 0, \"\\\"\": 1, \"#")]
    [InlineData("tokenizer/vocab.json", "[\"a\", \"b\"]")]
    public void A_garbage_file_is_one_error_line_naming_it_and_exit_code_2(string file, string content) =>
        Refused(model => File.WriteAllText(Path.Combine(model, file), content), Path.GetFileName(file));

    [Fact]
    public void A_truncated_vocab_is_named()
    {
        Refused(model =>
        {
            string vocab = Path.Combine(model, "tokenizer", "vocab.json");
            var bytes = File.ReadAllBytes(vocab);
            File.WriteAllBytes(vocab, bytes[..(bytes.Length / 2)]);
        }, "vocab.json");
    }

    [Fact]
    public void A_marker_naming_the_wrong_card_is_refused_from_the_headers_naming_card_tensor_and_shapes()
    {
        // Before: klein-4b's whole transformer (7.7 GB) was built, then the load failed (21.8 s).
        string err = Refused(model => File.WriteAllText(Path.Combine(model, "inference-server.json"), "{\"model_card\":\"flux2-klein-4b\"}"),
            "flux2-klein-4b", "img_in.weight", "[3072, 128]", "[64, 128]");
        Assert.Contains("inference-server.json", err);
    }

    [Theory]
    [InlineData("tiny", "diffusers", "flux2-klein-4b")]
    [InlineData("zimage-tiny", "single-file", "zimage-turbo")]
    public void A_wrong_card_is_refused_in_the_other_layouts_and_families(string preset, string layout, string wrongCard)
    {
        string parent = Directory.CreateTempSubdirectory("wrong-card-").FullName;
        try
        {
            string model = Path.Combine(parent, "model");
            Assert.Equal(0, Cli.Invoke("random-checkpoint", "--preset", preset, "--layout", layout, "--out", model, "--dtype", "fp32").Rc);
            File.WriteAllText(Path.Combine(model, "inference-server.json"), $"{{\"model_card\":\"{wrongCard}\"}}");
            var (rc, err) = Generate(model, Path.Combine(parent, "out.png"));
            log.WriteLine(err);
            Assert.True(rc == 2, $"exit code {rc}: {err}");
            Assert.Contains(wrongCard, err);
            Assert.Contains("should be [", err);
        }
        finally { Directory.Delete(parent, recursive: true); }
    }

    [Fact]
    public void The_wrong_card_is_refused_by_the_folder_loader_too()
    {
        string model = tiny.Copy(out string parent);
        try
        {
            File.WriteAllText(Path.Combine(model, "inference-server.json"), "{\"model_card\":\"flux2-klein-4b\"}");
            var e = Assert.Throws<InvalidDataException>(() => Flux2ModelFolder.Load(model, ScalarType.Float32));
            Assert.Contains("flux2-klein-4b", e.Message);
        }
        finally { Directory.Delete(parent, recursive: true); }
    }

    [Theory]
    [InlineData("flux-2-tiny.safetensors", "double_blocks.0.img_attn.qkv.weight", float.NaN)]
    [InlineData("flux-2-tiny.safetensors", "final_layer.linear.weight", float.PositiveInfinity)]
    [InlineData("ae.safetensors", "decoder.conv_out.weight", float.NaN)]
    [InlineData("text_encoder/model.safetensors", "model.layers.0.mlp.up_proj.weight", float.NaN)]
    public void Non_finite_weights_are_refused_naming_the_tensor(string file, string tensor, float value)
    {
        // Before: a black PNG and exit code 0.
        string err = Refused(model => TinyModelFolder.Poison(Path.Combine(model, file), tensor, value), tensor, "non-finite");
        Assert.Contains(Path.GetFileName(file), err);
    }
}
