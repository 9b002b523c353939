using System.Text.Json;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Flux2;

/// <summary>Structure, model cards, input validation, BF16, and the diffusers layout of the transformer.</summary>
public class Flux2ModelTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cards => new() { "flux2-tiny", "flux2-klein-4b", "flux2-klein-9b", "flux2-dev" };
    public static TheoryData<string> DitCases => Fixtures.Cases("flux2-dit-");

    [Theory, MemberData(nameof(Cards))]
    public void Spec_list_equals_module_parameters_without_allocating(string card)
    {
        var config = ModelCards.Load(card).Transformer;
        using var model = new Flux2Transformer(config, new Device(DeviceType.META)); // meta: shapes only, no memory
        var actual = model.named_parameters().Select(p => (p.name, string.Join("x", p.parameter.shape))).ToList();
        var expected = Flux2Specs.Parameters(config).Select(p => (p.Name, string.Join("x", p.Shape))).ToList();
        Assert.Equal(expected, actual);
        output.WriteLine($"{card}: {expected.Count} tensors, {Flux2Specs.ParameterCount(config) / 1e9:F3} B parameters");
    }

    [Fact]
    public void Tiny_cpu_module_and_cards_have_the_documented_numbers()
    {
        using var tiny = new Flux2Transformer(Flux2Config.Tiny);
        Assert.Equal(Flux2Specs.Parameters(Flux2Config.Tiny).Select(p => p.Name), tiny.named_parameters().Select(p => p.name));
        Assert.Equal(3 * 64, Flux2Config.Tiny.ContextInDim);
        var k4 = ModelCards.Load("flux2-klein-4b");
        Assert.Equal((3072, 24, 5, 20, 7680, false), (k4.Transformer.HiddenSize, k4.Transformer.NumHeads, k4.Transformer.Depth, k4.Transformer.DepthSingleBlocks, k4.Transformer.ContextInDim, k4.Transformer.UseGuidanceEmbed));
        Assert.Equal((4, true, "flux2-vae", "qwen3-4b"), (k4.Sampling.DefaultSteps, k4.Sampling.Distilled, k4.Vae, k4.TextEncoder));
        Assert.InRange(Flux2Specs.ParameterCount(k4.Transformer), 3.8e9, 4.0e9);
        Assert.InRange(Flux2Specs.ParameterCount(Flux2Config.Klein9B), 9.0e9, 9.2e9);
        Assert.True(Flux2Config.Dev.UseGuidanceEmbed);
        Assert.Equal("qwen3-8b", ModelCards.Load("flux2-klein-9b").TextEncoder);
    }

    [Theory, MemberData(nameof(DitCases))]
    public void Fixture_weights_hold_exactly_the_spec_list(string caseName)
    {
        using var c = new Flux2Case(caseName);
        using var w = SafetensorsFile.Open(Path.Combine(c.Dir, "weights.safetensors"));
        var file = w.Entries.Select(e => (e.Name, string.Join("x", e.Shape))).Order().ToList();
        var spec = Flux2Specs.Parameters(c.Config).Select(p => (p.Name, string.Join("x", p.Shape))).Order().ToList();
        Assert.Equal(spec, file);
    }

    [Fact]
    public void Config_rejects_unknown_keys_and_inconsistent_values()
    {
        var good = File.ReadAllText(Path.Combine(ModelCards.Directory, "flux2-tiny.json"));
        using var doc = JsonDocument.Parse(good);
        string tiny = doc.RootElement.GetProperty("transformer").GetRawText();
        var e = Assert.Throws<ArgumentException>(() => Flux2Config.FromJson(tiny.Replace("\"theta\"", "\"rope_thetaa\": 1, \"theta\"")));
        Assert.Contains("rope_thetaa", e.Message);
        e = Assert.Throws<ArgumentException>(() => Flux2Config.FromJson(tiny.Replace("\"num_heads\": 2", "\"num_heads\": 3")));
        Assert.Contains("num_heads", e.Message);
        e = Assert.Throws<ArgumentException>(() => Flux2Config.FromJson(tiny.Replace("\"axes_dim\": [\n      8,", "\"axes_dim\": [\n      6,")));
        Assert.Contains("axes_dim", e.Message);
        e = Assert.Throws<ArgumentException>(() => Flux2Config.FromJson(tiny.Replace("\"linear_bias\": false", "\"linear_bias\": true")));
        Assert.Contains("linear_bias", e.Message);
        e = Assert.Throws<ArgumentException>(() => Flux2Config.FromJson(tiny.Replace("\"hidden_size\": 64,", "")));
        Assert.Contains("hidden_size", e.Message);
        Assert.Throws<ArgumentException>(() => ModelCards.Load("no-such-card"));
        var tinyConfig = Flux2Config.Tiny;
        var back = Flux2Config.FromJson(tinyConfig.ToJson());
        Assert.Equal(tinyConfig.AxesDim, back.AxesDim);
        Assert.Equal(tinyConfig, back with { AxesDim = tinyConfig.AxesDim });
    }

    [Fact]
    public void Bad_inputs_name_the_tensor_and_shapes()
    {
        using var scope = NewDisposeScope();
        var cfg = Flux2Config.Tiny;
        using var m = new Flux2Transformer(cfg).InitRandom(1);
        var x = randn(1, 6, cfg.InChannels); var xIds = zeros(1, 6, 4, ScalarType.Int64);
        var ctx = randn(1, 3, cfg.ContextInDim); var ctxIds = zeros(1, 3, 4, ScalarType.Int64); var t = full(1, 0.5f);
        Assert.Equal([1L, 6, cfg.InChannels], m.Forward(x, xIds, t, ctx, ctxIds).shape);

        void Bad(string expectedFragment, Action a) { var e = Assert.Throws<ArgumentException>(a); output.WriteLine(e.Message); Assert.Contains(expectedFragment, e.Message); }
        Bad("x (image tokens) must be [B, L, 128], got [1, 6, 64]", () => m.Forward(randn(1, 6, 64), xIds, t, ctx, ctxIds));
        Bad("ctx (text features) must be [B, Lt, 192], got [1, 3, 100]", () => m.Forward(x, xIds, t, randn(1, 3, 100), ctxIds));
        Bad("x_ids must be [B, L, 4] matching x [1, 6, 128], got [1, 5, 4]", () => m.Forward(x, zeros(1, 5, 4, ScalarType.Int64), t, ctx, ctxIds));
        Bad("ctx_ids must be [B, Lt, 4] matching ctx [1, 3, 192], got [1, 4, 4]", () => m.Forward(x, xIds, t, ctx, zeros(1, 4, 4, ScalarType.Int64)));
        Bad("batch mismatch: x [1, 6, 128] vs ctx [2, 3, 192]", () => m.Forward(x, xIds, t, randn(2, 3, cfg.ContextInDim), zeros(2, 3, 4, ScalarType.Int64)));
        Bad("timesteps must be [1]", () => m.Forward(x, xIds, full(2, 0.5f), ctx, ctxIds));
        Bad("integer positions", () => m.Forward(x, zeros(1, 6, 4), t, ctx, ctxIds));
        using var g = new Flux2Transformer(cfg with { UseGuidanceEmbed = true });
        Bad("guidance is required", () => g.Forward(x, xIds, t, ctx, ctxIds));
    }

    [Fact]
    public void Bf16_forward_stays_close_to_fp32()
    {
        // Bound measured on flux2-dit-t2i (see the test output); BF16 has 8 mantissa bits (~3.9e-3 relative per rounding).
        const double maxRelRms = 0.02; // measured 0.0075 relative RMS (max |diff| / max |ref| 0.0081) on flux2-dit-t2i
        using var c = new Flux2Case(Fixtures.CaseNames("flux2-dit-").First(n => !n.Contains("guidance")));
        using var scope = NewDisposeScope();
        using var f32 = c.LoadModel();
        using var bf16 = c.LoadModel(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, bf16.DType);
        var args = (c.T("x_img"), c.T("img_ids"), c.T("timesteps"), c.T("ctx"), c.T("ctx_ids"));
        var a = f32.Forward(args.Item1, args.Item2, args.Item3, args.Item4, args.Item5);
        var b = bf16.Forward(args.Item1, args.Item2, args.Item3, args.Item4, args.Item5);
        Assert.Equal(ScalarType.BFloat16, b.dtype);
        var bf = b.to(ScalarType.Float32);
        Assert.False(bf.isnan().any().item<bool>(), "BF16 output has NaN");
        double relRms = ((bf - a).square().mean().sqrt() / a.square().mean().sqrt()).item<float>();
        double relMax = ((bf - a).abs().max() / a.abs().max()).item<float>();
        output.WriteLine($"BF16 vs FP32 on {c.Name}: relative RMS error {relRms:G3}, max |diff| / max |ref| {relMax:G3}");
        Assert.True(relRms < maxRelRms, $"relative RMS error {relRms} >= {maxRelRms}");
    }

    [Theory, MemberData(nameof(DitCases))]
    public void Diffusers_layout_round_trips_and_loads_to_identical_outputs(string caseName)
    {
        using var c = new Flux2Case(caseName);
        using var scope = NewDisposeScope();
        var cfg = c.Config;
        using var w = SafetensorsFile.Open(Path.Combine(c.Dir, "weights.safetensors"));
        var bfl = w.Entries.ToDictionary(e => e.Name, e => w.Load(e.Name));
        var specs = Flux2Diffusers.Specs(cfg);
        var diffusers = specs.ToDictionary(s => s.Name, s => Flux2Diffusers.ToDiffusers(s, n => bfl[n]));
        foreach (var s in specs) Assert.Equal(s.Shape, diffusers[s.Name].shape);
        Assert.Contains("transformer_blocks.0.attn.add_k_proj.weight", diffusers.Keys);
        Assert.Contains("single_transformer_blocks.1.attn.to_qkv_mlp_proj.weight", diffusers.Keys);
        long h = cfg.HiddenSize; // norm_out.linear = (scale, shift): its first half is BFL's second half
        Assert.True(diffusers["norm_out.linear.weight"][..(int)h].eq(bfl["final_layer.adaLN_modulation.1.weight"][(int)h..]).all().item<bool>());
        foreach (var p in Flux2Specs.Parameters(cfg))
            Assert.True(Flux2Diffusers.ToBfl(p.Name, p.Shape[0], n => diffusers[n]).eq(bfl[p.Name]).all().item<bool>(), $"{p.Name} changed in the round trip");

        string dir = Directory.CreateTempSubdirectory("flux2-diffusers-").FullName;
        try
        {
            SafetensorsWriter.Write(Path.Combine(dir, "diffusion_pytorch_model.safetensors"), diffusers.Select(kv => (kv.Key, kv.Value)));
            using var viaDiffusers = new Flux2Transformer(cfg);
            var report = Flux2Checkpoint.Load(viaDiffusers, dir);
            Assert.True(report.IsClean, report.ToString());
            using var viaBfl = c.LoadModel();
            var x = c.Has("x_model_in") ? c.T("x_model_in") : c.T("x_img");
            var ids = c.Has("x_ids_model_in") ? c.T("x_ids_model_in") : c.T("img_ids");
            Tensor? g = c.Has("guidance") ? c.T("guidance") : null;
            var a = viaBfl.Forward(x, ids, c.T("timesteps"), c.T("ctx"), c.T("ctx_ids"), g);
            var b = viaDiffusers.Forward(x, ids, c.T("timesteps"), c.T("ctx"), c.T("ctx_ids"), g);
            Assert.True(a.eq(b).all().item<bool>(), $"outputs differ by {TensorAssert.MaxAbsDiff(a, b)}");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory]
    [InlineData(Flux2Layout.Bfl), InlineData(Flux2Layout.Diffusers)]
    public void Random_tiny_checkpoint_loads_back_cleanly_with_equal_outputs(Flux2Layout layout)
    {
        using var scope = NewDisposeScope();
        var card = ModelCards.Load("flux2-tiny");
        string dir = Directory.CreateTempSubdirectory("flux2-random-").FullName;
        try
        {
            long bytes = 0;
            string path = Flux2RandomCheckpoint.Write(card.Transformer, layout, dir, "flux2-tiny.safetensors", ScalarType.Float32, seed: 7,
                new Progress<long>(b => bytes = b), maxShardBytes: 600_000);
            if (layout == Flux2Layout.Diffusers)
            {
                Assert.True(File.Exists(Path.Combine(path, "diffusion_pytorch_model.safetensors.index.json")));
                Assert.True(File.Exists(Path.Combine(path, "diffusion_pytorch_model-00001-of-00003.safetensors")), string.Join(", ", Directory.GetFiles(path)));
                using var cfgJson = JsonDocument.Parse(File.ReadAllText(Path.Combine(path, "config.json")));
                Assert.Equal(card.Transformer.ContextInDim, cfgJson.RootElement.GetProperty("joint_attention_dim").GetInt32());
                Assert.Equal(card.Transformer.Depth, cfgJson.RootElement.GetProperty("num_layers").GetInt32());
            }
            using var loaded = new Flux2Transformer(card.Transformer);
            var report = Flux2Checkpoint.Load(loaded, path, strict: false);
            Assert.True(report.IsClean, report.ToString());
            using var expected = new Flux2Transformer(card.Transformer).InitRandom(7);
            var x = randn(1, 12, 128); var ids = Pack(3, 4); var ctx = randn(1, 5, card.Transformer.ContextInDim);
            var ctxIds = zeros(1, 5, 4, ScalarType.Int64); ctxIds[.., .., 3] = arange(5);
            var t = full(1, 0.7f);
            Assert.True(loaded.Forward(x, ids, t, ctx, ctxIds).eq(expected.Forward(x, ids, t, ctx, ctxIds)).all().item<bool>());
        }
        finally { Directory.Delete(dir, recursive: true); }

        static Tensor Pack(long h, long w) => stack([zeros(h * w, ScalarType.Int64), arange(h).repeat_interleave(w), arange(w).repeat(h), zeros(h * w, ScalarType.Int64)], 1).unsqueeze(0);
    }
}
