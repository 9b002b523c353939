using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Server.Cli;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Cli;

[Collection(SpectreConsole.Name)]
public class RandomCheckpointCommandTests
{
    [Theory]
    [InlineData("bfl", "flux-2-tiny.safetensors")]
    [InlineData("diffusers", "transformer")]
    public void Writes_a_tiny_transformer_that_loads_cleanly(string layout, string expectedPath)
    {
        string dir = Directory.CreateTempSubdirectory("random-checkpoint-").FullName;
        try
        {
            int rc = CommandLine.Build().Parse(["random-checkpoint", "--preset", "tiny", "--layout", layout, "--out", dir, "--dtype", "bf16", "--seed", "5"]).Invoke();
            Assert.Equal(0, rc);
            string path = Path.Combine(dir, expectedPath);
            Assert.True(File.Exists(path) || Directory.Exists(path), $"{path} missing");
            using var scope = NewDisposeScope();
            using var model = new Flux2Transformer(ModelCards.Load("flux2-tiny").Transformer, dtype: ScalarType.BFloat16);
            var report = Flux2Checkpoint.Load(model, path);
            Assert.True(report.IsClean, report.ToString());
            using var expected = new Flux2Transformer(ModelCards.Load("flux2-tiny").Transformer, dtype: ScalarType.BFloat16).InitRandom(5);
            foreach (var ((name, a), (_, b)) in model.named_parameters().Zip(expected.named_parameters()))
                Assert.True(a.eq(b).all().item<bool>(), name);

            // The rest of the folder: VAE, text encoder, tokenizer (and model_index.json for diffusers), all loadable.
            foreach (var part in layout == "bfl" ? new[] { "ae.safetensors", "text_encoder/model.safetensors", "text_encoder/config.json", "tokenizer/vocab.json" }
                         : ["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/merges.txt"])
                Assert.True(File.Exists(Path.Combine(dir, part)), part);
            using var all = Flux2ModelFolder.Load(dir, ScalarType.BFloat16);
            Assert.Equal("flux2-tiny", all.Card.Name);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Rejects_an_unknown_preset()
    {
        Assert.NotEqual(0, CommandLine.Build().Parse(["random-checkpoint", "--preset", "huge", "--out", "/tmp/x"]).Invoke());
    }
}
