using System.Text.Json;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Flux2.Autoencoder;

public class AutoencoderTests(ITestOutputHelper output)
{
    [Fact]
    public void Real_card_is_the_BFL_default_with_BFL_state_dict_names_and_shapes()
    {
        var card = TinyVae.Card("flux2-vae");
        Assert.Equal(JsonSerializer.Serialize(AutoEncoderConfig.Flux2), JsonSerializer.Serialize(card));
        Assert.Equal((128, 8, 128), (card.Ch, card.DownFactor, card.TokenChannels));

        using var ae = new Flux2Autoencoder(card);
        var shapes = ae.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        void Has(string key, params long[] shape) => Assert.True(shapes.TryGetValue(key, out var s) && s.SequenceEqual(shape), $"{key}: [{string.Join(", ", shapes.GetValueOrDefault(key) ?? [])}]");
        Has("encoder.conv_in.weight", 128, 3, 3, 3);
        Has("encoder.down.0.block.0.norm1.weight", 128);
        Has("encoder.down.1.block.0.nin_shortcut.weight", 256, 128, 1, 1);
        Has("encoder.down.2.downsample.conv.weight", 512, 512, 3, 3);
        Has("encoder.mid.attn_1.q.weight", 512, 512, 1, 1);
        Has("encoder.conv_out.weight", 64, 512, 3, 3);
        Has("encoder.quant_conv.weight", 64, 64, 1, 1);
        Has("decoder.post_quant_conv.weight", 32, 32, 1, 1);
        Has("decoder.conv_in.weight", 512, 32, 3, 3);
        Has("decoder.up.3.upsample.conv.weight", 512, 512, 3, 3);
        Has("decoder.up.1.block.0.nin_shortcut.weight", 256, 512, 1, 1);
        Has("decoder.up.0.block.2.conv2.weight", 128, 128, 3, 3);
        Has("decoder.conv_out.weight", 3, 128, 3, 3);
        Has("bn.running_mean", 128);
        Has("bn.num_batches_tracked");
        Assert.DoesNotContain("encoder.down.3.downsample.conv.weight", shapes.Keys);
        Assert.DoesNotContain("decoder.up.0.upsample.conv.weight", shapes.Keys);
        output.WriteLine($"{shapes.Count} tensors, {ae.parameters().Sum(p => p.numel()):N0} parameters");
    }

    [Fact]
    public void Diffusers_key_map_examples_and_round_trip_of_every_real_key()
    {
        const int levels = 4;
        (string Bfl, string Diffusers)[] examples =
        [
            ("encoder.quant_conv.weight", "quant_conv.weight"),
            ("decoder.post_quant_conv.bias", "post_quant_conv.bias"),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("encoder.down.2.downsample.conv.bias", "encoder.down_blocks.2.downsamplers.0.conv.bias"),
            ("decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight"),
            ("decoder.up.0.block.2.norm1.weight", "decoder.up_blocks.3.resnets.2.norm1.weight"),
            ("decoder.up.1.block.0.nin_shortcut.bias", "decoder.up_blocks.2.resnets.0.conv_shortcut.bias"),
            ("decoder.mid.block_2.conv1.weight", "decoder.mid_block.resnets.1.conv1.weight"),
            ("encoder.mid.attn_1.norm.bias", "encoder.mid_block.attentions.0.group_norm.bias"),
            ("decoder.mid.attn_1.k.weight", "decoder.mid_block.attentions.0.to_k.weight"),
            ("decoder.mid.attn_1.proj_out.bias", "decoder.mid_block.attentions.0.to_out.0.bias"),
            ("bn.running_var", "bn.running_var"),
        ];
        foreach (var (bfl, diffusers) in examples)
        {
            Assert.Equal(diffusers, AutoEncoderKeyMap.ToDiffusers(bfl, levels));
            Assert.Equal(bfl, AutoEncoderKeyMap.ToBfl(diffusers, levels));
        }
        using var ae = new Flux2Autoencoder(AutoEncoderConfig.Flux2);
        var keys = ae.state_dict().Keys.ToList();
        var mapped = keys.Select(k => AutoEncoderKeyMap.ToDiffusers(k, levels)).ToList();
        Assert.Equal(keys.Count, mapped.Distinct().Count());
        Assert.Equal(keys, mapped.Select(k => AutoEncoderKeyMap.ToBfl(k, levels)));
        Assert.All(mapped.Where(k => !k.StartsWith("bn.", StringComparison.Ordinal)), k => Assert.DoesNotMatch(@"\.(up|down|mid)\.|nin_shortcut|attn_1|(?<!conv_)norm_out|proj_out", k));
    }

    [Fact]
    public void Weights_round_trip_through_the_diffusers_layout_and_load_to_the_same_outputs()
    {
        var config = TinyVae.Card("flux2-vae-tiny");
        using var scope = NewDisposeScope();
        using var reference = TinyVae.Create(config, seed: 11);
        var bfl = reference.state_dict();
        var diffusers = AutoEncoderKeyMap.ToDiffusers(bfl, config.NumLevels);
        Assert.Equal(new long[] { 64, 64 }, diffusers["decoder.mid_block.attentions.0.to_q.weight"].shape);
        var back = AutoEncoderKeyMap.ToBfl(diffusers, config.NumLevels);
        Assert.Equal(bfl.Keys.Order(), back.Keys.Order());
        foreach (var (k, v) in bfl) Assert.True(v.Same(back[k]), k);

        using var dir = new Weights.TempDir();
        SafetensorsWriter.Write(dir["diffusers.safetensors"], diffusers.Select(kv => (kv.Key, kv.Value)));
        using var file = SafetensorsFile.Open(dir["diffusers.safetensors"]);
        using var loaded = new Flux2Autoencoder(config);
        var report = loaded.LoadWeights(file, strict: true);
        Assert.True(report.IsClean, report.ToString());
        foreach (var (k, v) in loaded.state_dict()) Assert.True(v.Same(bfl[k]), k);

        manual_seed(5);
        var image = rand(1, 3, 32, 48).mul_(2).sub_(1);
        var tokens = reference.Encode(image);
        Assert.True(tokens.Same(loaded.Encode(image)));
        Assert.True(reference.Decode(tokens).Same(loaded.Decode(tokens)));
    }

    public static TheoryData<long[], string> BadImages => new()
    {
        { [1, 3, 50, 64], "multiples of 16" },
        { [1, 3, 48, 60], "multiples of 16" },
        { [1, 4, 48, 64], "[B>0, 3, H, W]" },
        { [0, 3, 48, 64], "[B>0, 3, H, W]" },
        { [3, 48, 64], "[B>0, 3, H, W]" },
    };

    [Theory]
    [MemberData(nameof(BadImages))]
    public void Encode_rejects_bad_images_naming_the_tensor_and_shape(long[] shape, string expected)
    {
        using var ae = TinyVae.Create(TinyVae.Card("flux2-vae-tiny"), seed: 1);
        using var image = zeros(shape);
        var e = Assert.Throws<ArgumentException>(() => ae.Encode(image));
        Assert.Contains("image", e.Message);
        Assert.Contains($"[{string.Join(", ", shape)}]", e.Message);
        Assert.Contains(expected, e.Message);
        if (shape.Length == 4 && shape[0] > 0 && shape[1] == 3 && (shape[2] % 8 != 0 || shape[3] % 8 != 0))
            Assert.Contains("multiples of 8", Assert.Throws<ArgumentException>(() => ae.EncodeMoments(image)).Message);
    }

    [Fact]
    public void Decode_rejects_bad_latents_naming_the_tensor_and_shape()
    {
        using var ae = TinyVae.Create(TinyVae.Card("flux2-vae-tiny"), seed: 1);
        foreach (var (shape, name) in new (long[], string)[] { ([1, 127, 3, 4], "tokens"), ([0, 128, 3, 4], "tokens"), ([128, 3, 4], "tokens") })
        {
            using var t = zeros(shape);
            var e = Assert.Throws<ArgumentException>(() => ae.Decode(t));
            Assert.Contains(name, e.Message);
            Assert.Contains($"[{string.Join(", ", shape)}]", e.Message);
        }
        using var z = zeros(1, 31, 5, 7);
        Assert.Contains("z: expected [B>0, 32, h>0, w>0], got [1, 31, 5, 7]", Assert.Throws<ArgumentException>(() => ae.DecodeLatent(z)).Message);
    }

    [Fact]
    public void Token_sequence_and_ids_round_trip_with_a_time_offset()
    {
        using var scope = NewDisposeScope();
        var grid = randn(2, 128, 3, 5);
        var (seq, ids) = LatentTokens.ToSequence(grid, t: 10);
        Assert.Equal(new long[] { 2, 15, 128 }, seq.shape);
        Assert.True(seq[1, 7].Same(grid[1, .., 1, 2]));              // token i*w+j = 1*5+2
        Assert.Equal(new long[] { 10, 1, 2, 0 }, ids[1, 7].data<long>().ToArray());
        Assert.True(LatentTokens.FromSequence(seq, ids).Same(grid));
        var perm = randperm(15);
        Assert.True(LatentTokens.FromSequence(seq.index_select(1, perm), ids.index_select(1, perm)).Same(grid));
    }

    /// <summary>
    /// A batch-1 bf16 decode (NCHW all the way, as a single-image request runs) against float32. libtorch 2.10's CPU bf16
    /// 3x3 conv is wrong for fewer than 16 output channels on NCHW input (AVX512-BF16 CPUs: 25-45% of the range off), so
    /// conv_out (3 channels) runs in float32; with it the error is the ordinary bf16 drift (~1-2% of the range).
    /// </summary>
    [Fact]
    public void Bf16_decode_of_one_image_stays_close_to_float32()
    {
        var config = TinyVae.Card("flux2-vae-tiny");
        // Weights and latent from a private generator (other tests draw from the global one in parallel), in the
        // fixtures' style: conv w ~ N(0, 1/fan_in), biases N(0, 0.1^2), GroupNorm gamma 1+N(0, 0.25^2), beta N(0, 0.2^2).
        using var gen = new Generator(21);
        using var reference = new Flux2Autoencoder(config);
        using (no_grad())
            foreach (var (name, p) in reference.named_parameters())
            {
                using var r = randn(p.shape, generator: gen);
                if (p.dim() == 4) p.copy_(r.div_(Math.Sqrt(p.shape[1] * p.shape[2] * p.shape[3])));
                else if (name.EndsWith(".bias", StringComparison.Ordinal)) p.copy_(r.mul_(name.Contains("norm") ? 0.2 : 0.1));
                else p.copy_(r.mul_(0.25).add_(1));
            }
        using var bf16 = new Flux2Autoencoder(config);
        bf16.load_state_dict(reference.state_dict());
        bf16.To(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, bf16.ComputeType);
        using var scope = NewDisposeScope();
        var z = randn([1, config.ZChannels, 6, 8], generator: gen);
        var expected = reference.DecodeLatent(z);
        var ours = bf16.DecodeLatent(z);
        Assert.Equal(ScalarType.Float32, ours.dtype);
        double range = expected.abs().max().item<float>(), diff = TensorAssert.MaxAbsDiff(ours, expected);
        output.WriteLine($"bf16 decode [1,{config.ZChannels},6,8]: max|diff| {diff:G3} = {diff / range:P2} of max|ref| {range:G3}");
        TensorAssert.Close(ours, expected, 0.05 * range, 0, "bf16 decode (batch 1)");
    }
}

static class TensorSame
{
    /// <summary>Same shape, dtype and every element bit-for-bit (as torch.equal).</summary>
    public static bool Same(this Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        return a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && (a == b).all().item<bool>();
    }
}
