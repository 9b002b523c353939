using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Generation;

/// <summary>
/// Batch invariance at klein's width (hidden 3072, 24 heads; one double and one single block, random weights), where the
/// CPU's FP32 token GEMMs (M = B x L) no longer sum every row in the same order at every M. Runs alone: a 0.5 B-parameter model.
/// </summary>
[Collection(RunAlone.Name)]
public class WideBatchInvarianceTests(TinyModelFolders folders, ITestOutputHelper output) : IClassFixture<TinyModelFolders>
{
    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void Klein_width_rows_at_batch_3_match_batch_1(ScalarType dtype)
    {
        var tiny = folders.BflModel;
        var cfg = tiny.Card.Transformer with { HiddenSize = 3072, NumHeads = 24, AxesDim = [32, 32, 32, 32], Depth = 1, DepthSingleBlocks = 1 };
        using var transformer = new Flux2Transformer(cfg, dtype: dtype).InitRandom(5);
        var model = new Flux2Model(tiny.Directory, tiny.Layout, tiny.Card with { Transformer = cfg }, transformer, tiny.Vae, tiny.TextEncoder,
            tiny.Tokenizer, dtype, tiny.LoadReport); // not disposed: the fixture owns the VAE and text encoder
        using var p = new GenerationPipeline(model);
        var req = new GenerationRequest { Prompt = "a red bicycle", Seed = 100, Count = 3, Steps = 1, Size = new SizeRequest("256x256") };
        var kept = new List<Tensor>();
        Tensor Keep(Tensor t) { var c = t.clone().DetachFromDisposeScope(); kept.Add(c); return c; } // step tensors die with their step
        var lat3 = new Tensor[3];
        var three = p.Generate(req, s => lat3[s.Image] = Keep(s.Latents));                  // one batch of 3 rows
        var codec = new ImageCodec();
        for (int j = 0; j < 3; j++)
        {
            Tensor lat1 = null!;
            var one = p.Generate(req with { Seed = 100 + j, Count = 1 }, s => lat1 = Keep(s.Latents));
            using var scope = NewDisposeScope();
            float latentDiff = (lat1 - lat3[j]).abs().max().item<float>();
            var (a, b) = (codec.Decode(one.Images[0].Image.Bytes).Rgb, codec.Decode(three.Images[j].Image.Bytes).Rgb);
            int pixelDiff = a.Zip(b).Max(t => Math.Abs(t.First - t.Second));
            output.WriteLine($"{dtype} image {j}: latents max |batch 1 - batch 3| {latentDiff:G3} (max |latent| {lat1.abs().max().item<float>():G3}); " +
                $"u8 max diff {pixelDiff}, {a.Zip(b).Count(t => t.First != t.Second)} of {a.Length} values differ");
            if (dtype == ScalarType.BFloat16)
                Assert.Equal(one.Images[0].Image.Bytes, three.Images[j].Image.Bytes);             // oneDNN BF16 GEMMs: bitwise
            else
            {
                Assert.True(latentDiff <= 1e-5f, $"latents differ by {latentDiff}");               // measured 1.4e-6 (2 steps)
                Assert.True(pixelDiff <= 1, $"pixels differ by {pixelDiff}");                      // measured 1 level in ~10 of 196,608 values
            }
        }
        foreach (var t in kept) t.Dispose();
    }
}
