using System.Text.Json;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Tests.Weights;
using InferenceServer.Models.Weights;
using InferenceServer.Models.ZImage;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.ZImage;

/// <summary>
/// <see cref="ZImageAutoencoder"/> loading: the real FLUX.1 AE's tensor list, config.json and shape fallback, strict
/// refusal naming the tensors, and BFL-named files. Numerical parity is in the Pipeline tests (ZImageVaeParityTests).
/// </summary>
public class ZImageAutoencoderTests(ITestOutputHelper output)
{
    /// <summary>The zimage-vae-* fixtures' tiny config (decoder-only / encoder-only files there, so tests write full ones).</summary>
    static ZImageVaeConfig Tiny => ZImageVaeConfig.Flux1 with { BlockOutChannels = [16, 32, 32, 32], LayersPerBlock = 1, NormNumGroups = 8 };

    [Fact]
    public void Real_flux1_vae_tensor_list()
    {
        var specs = ZImageAutoencoder.Specs(ZImageVaeConfig.Flux1, ScalarType.BFloat16);
        long parameters = specs.Sum(s => s.Shape.Aggregate(1L, (a, b) => a * b));
        output.WriteLine($"FLUX.1 AE: {specs.Count} tensors, {parameters:N0} parameters, {specs.Sum(s => s.ByteLength) / 1e6:F1} MB as BF16");
        var byName = specs.ToDictionary(s => s.Name, s => s.Shape);
        Assert.Equal([512, 512], byName["decoder.mid_block.attentions.0.to_q.weight"]);
        Assert.Equal([512, 16, 3, 3], byName["decoder.conv_in.weight"]);
        Assert.Equal([32, 512, 3, 3], byName["encoder.conv_out.weight"]);
        Assert.Equal([512, 512, 3, 3], byName["decoder.up_blocks.0.upsamplers.0.conv.weight"]);     // up_blocks.0 = deepest
        Assert.Equal([128, 256, 1, 1], byName["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"]);
        Assert.Equal([128, 128, 3, 3], byName["encoder.down_blocks.0.downsamplers.0.conv.weight"]);
        Assert.False(byName.ContainsKey("decoder.up_blocks.3.upsamplers.0.conv.weight"));
        Assert.DoesNotContain(specs, s => s.Name.Contains("quant_conv", StringComparison.Ordinal));
        Assert.All(specs, s => Assert.Equal(SafetensorsDType.BF16, s.DType));
        // The released vae/diffusion_pytorch_model.safetensors is ~168 MB (REFERENCE-NOTES): 83.8 M parameters as 16-bit.
        Assert.Equal(83_819_683, parameters);
    }

    [Fact]
    public void Shapes_give_back_the_config()
    {
        var specs = ZImageAutoencoder.Specs(ZImageVaeConfig.Flux1);
        var entries = specs.Select(s => new TensorEntry(s.Name, s.DType, s.Shape, 0, 0, "(specs)")).ToList();
        var c = ZImageVaeConfig.FromTensors(entries);
        Assert.Equal([128, 256, 512, 512], c.BlockOutChannels);
        Assert.Equal((2, 16, 3, 3, false, false), (c.LayersPerBlock, c.LatentChannels, c.InChannels, c.OutChannels, c.UseQuantConv, c.UsePostQuantConv));
        // Decoder only (the fixtures' decode file) and BFL names (FLUX.1 ae.safetensors) give the same.
        var decoder = ZImageVaeConfig.FromTensors(entries.Where(e => e.Name.StartsWith("decoder.", StringComparison.Ordinal)));
        Assert.Equal([128, 256, 512, 512], decoder.BlockOutChannels);
        Assert.Equal(2, decoder.LayersPerBlock);
        var bfl = ZImageVaeConfig.FromTensors(entries.Select(e => e with { Name = AutoEncoderKeyMap.ToBfl(e.Name, 4) }));
        Assert.Equal([128, 256, 512, 512], bfl.BlockOutChannels);
        Assert.Equal(16, bfl.LatentChannels);
    }

    [Fact]
    public void Diffusers_config_json_round_trips()
    {
        var c = ZImageVaeConfig.FromJson(Tiny.ToDiffusersJson().ToJsonString());
        Assert.Equal(Tiny.BlockOutChannels, c.BlockOutChannels);
        Assert.Equal((0.3611, 0.1159, 8), (c.ScalingFactor, c.Shift, c.NormNumGroups));
        Assert.Throws<InvalidDataException>(() => ZImageVaeConfig.FromJson("""{"block_out_channels": [128, 200]}"""));
        Assert.Throws<InvalidDataException>(() => ZImageVaeConfig.FromJson("""{"act_fn": "gelu"}"""));
        Assert.Equal(0, ZImageVaeConfig.FromJson("""{"shift_factor": null}""").Shift);
    }

    [Fact]
    public void A_random_vae_folder_loads_strictly_and_a_bfl_file_gives_the_same_pixels()
    {
        using var dir = new TempDir();
        string vae = Directory.CreateDirectory(dir["vae"]).FullName;
        var specs = ZImageAutoencoder.Specs(Tiny);
        SafetensorsWriter.Write(Path.Combine(vae, "diffusion_pytorch_model.safetensors"), specs, s => ZImageAutoencoder.RandomTensor(s, 7));
        File.WriteAllText(Path.Combine(vae, "config.json"), Tiny.ToDiffusersJson().ToJsonString());

        using var scope = NewDisposeScope();
        using var ae = ZImageAutoencoder.Load(vae);
        Assert.Equal(Tiny.BlockOutChannels, ae.Config.BlockOutChannels);
        Assert.Equal(ScalarType.Float32, ae.ComputeType);
        var latents = randn(1, 16, 4, 6, generator: new Generator(3));
        var pixels = ae.Decode(latents);
        Assert.Equal([1, 3, 32, 48], pixels.shape);
        var back = ae.Encode(pixels.clamp(-1, 1));
        Assert.Equal([1, 16, 4, 6], back.shape);

        // The same tensors under BFL names (attention as 1x1 convs), without config.json: same model.
        var bflFile = dir["ae.safetensors"];
        using (var src = SafetensorsFile.Open(Path.Combine(vae, "diffusion_pytorch_model.safetensors")))
            SafetensorsWriter.Write(bflFile, [.. AutoEncoderKeyMap.ToBfl(src.Entries.Select(e => KeyValuePair.Create(e.Name, src.Load(e.Name))), 4)
                .Select(kv => (kv.Key, kv.Value))]);
        // (GroupNorm groups are not in the shapes and the fallback's 32 does not divide 16: the config is given.)
        using var bflTiny = new ZImageAutoencoder(Tiny);
        using (var src = SafetensorsFile.Open(bflFile)) Assert.True(bflTiny.LoadWeights(src).IsClean);
        TensorAssert.Close(bflTiny.Decode(latents), pixels, 0, 0, "BFL-named file");
    }

    [Fact]
    public void Strict_load_names_missing_and_unexpected_tensors()
    {
        using var dir = new TempDir();
        var specs = ZImageAutoencoder.Specs(Tiny).Where(s => s.Name != "decoder.mid_block.attentions.0.to_k.bias").ToList();
        specs.Add(new TensorSpec("decoder.post_quant_conv.weight", SafetensorsDType.F32, [16, 16, 1, 1]));
        SafetensorsWriter.Write(dir["vae.safetensors"], specs, s => ZImageAutoencoder.RandomTensor(s, 1));
        using var source = SafetensorsFile.Open(dir["vae.safetensors"]);
        using var ae = new ZImageAutoencoder(Tiny);
        var e = Assert.Throws<InvalidDataException>(() => ae.LoadWeights(source));
        Assert.Contains("decoder.mid_block.attentions.0.to_k.bias", e.Message);
        Assert.Contains("decoder.post_quant_conv.weight", e.Message);
        var report = ae.LoadWeights(source, strict: false);
        Assert.Equal(["decoder.mid_block.attentions.0.to_k.bias"], report.Missing);
        Assert.Equal(["decoder.post_quant_conv.weight"], report.Unexpected);
    }

    [Fact]
    public void Bad_inputs_are_refused()
    {
        using var ae = new ZImageAutoencoder(Tiny);
        Assert.Throws<ArgumentException>(() => ae.Decode(zeros(1, 32, 4, 4)));
        Assert.Throws<ArgumentException>(() => ae.Encode(zeros(1, 3, 20, 16)));
        Assert.Throws<ArgumentException>(() => ae.Encode(zeros([1, 3, 16, 16], ScalarType.Byte)));
    }
}
