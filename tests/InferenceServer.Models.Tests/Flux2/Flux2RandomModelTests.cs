using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Flux2;

public class Flux2RandomModelTests
{
    [Fact]
    public void Text_encoder_specs_are_the_full_module_state_dict_with_hf_names()
    {
        var config = Flux2ModelFolder.TextEncoderConfig(ModelCards.Load("flux2-tiny"));
        using var scope = NewDisposeScope();
        using var full = new Qwen3TextEncoder(config, ScalarType.Float32, allLayers: true);
        var module = full.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        var specs = Flux2RandomModel.TextEncoderSpecs(config, ScalarType.BFloat16);
        Assert.Equal(module.Keys.Order(), specs.Select(s => s.Name).Order());
        foreach (var s in specs)
        {
            Assert.Equal(module[s.Name], s.Shape);
            Assert.Equal(SafetensorsDType.BF16, s.DType);
        }
    }

    [Fact]
    public void Klein_4b_text_encoder_is_the_official_size_and_vae_specs_carry_the_bn_buffers()
    {
        var card = ModelCards.Load("flux2-klein-4b");
        var te = Flux2RandomModel.TextEncoderSpecs(Flux2ModelFolder.TextEncoderConfig(card), ScalarType.BFloat16);
        Assert.Equal(36 * 11 + 2, te.Count);                                   // tied embeddings: no lm_head
        Assert.Equal(4_022_468_096L, te.Sum(s => s.ElementCount));            // Qwen3-4B without lm_head
        // The VAE specs are read from a built module; the tiny VAE keeps this test small (a full one is 336 MB of float32,
        // which disturbs the RSS-measuring tests running beside it). The klein-4B folder was written and loaded strictly by hand.
        var vae = Flux2RandomModel.VaeSpecs(Flux2ModelFolder.VaeConfig(ModelCards.Load("flux2-tiny")), ScalarType.BFloat16);
        Assert.Contains(vae, s => s.Name == "bn.running_mean" && s.Shape.SequenceEqual([128L]));
        Assert.Contains(vae, s => s.Name == "encoder.conv_in.weight" && s.Shape.SequenceEqual([32L, 3, 3, 3]));
        Assert.Contains(vae, s => s.Name == "bn.num_batches_tracked" && s.DType == SafetensorsDType.I64);
    }
}
