using System.Text.Json;
using InferenceServer.Models.Weights;
using InferenceServer.Models.ZImage;
using InferenceServer.Tests.Shared;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.ZImage;

/// <summary>Structure (specs vs the real tensor list), config sources, patchify, checkpoint namings and strict loading.</summary>
public class ZImageModelTests(ITestOutputHelper output)
{
    public static TheoryData<string> DitCases => Fixtures.Cases("zimage-dit-");

    static string Shape(long[] s) => string.Join("x", s);

    [Fact]
    public void Turbo_specs_equal_the_real_tensor_list()
    {
        // The case that carries the real model's tensor list (zimage-dit-t2i today), found by content, not by name.
        using var c = new ZImageCase(Fixtures.CaseNames("zimage-dit-").First(n => File.ReadAllText(Path.Combine(Fixtures.CaseDir(n), "case.json")).Contains("\"real_model\"")));
        var real = c.Json.GetProperty("real_model");
        var expected = real.GetProperty("tensors").EnumerateObject()
            .Select(p => (p.Name, Shape(p.Value.EnumerateArray().Select(x => x.GetInt64()).ToArray()))).ToList();
        var specs = ZImageSpecs.Transformer(ZImageConfig.Turbo);
        Assert.Equal(expected, specs.Select(s => (s.Name, Shape(s.Shape))).ToList());
        Assert.Equal(521, specs.Count);
        Assert.Equal(521, real.GetProperty("num_tensors").GetInt32());
        Assert.Equal(6_154_908_736L, ZImageSpecs.ParameterCount(ZImageConfig.Turbo));
        Assert.Equal(real.GetProperty("num_params").GetInt64(), ZImageSpecs.ParameterCount(ZImageConfig.Turbo));
        Assert.Equal((128, 10240, 256, 64), (ZImageConfig.Turbo.HeadDim, ZImageConfig.Turbo.FfnHidden, ZImageConfig.Turbo.AdalnDim, ZImageConfig.Turbo.PatchDim));
    }

    [Fact]
    public void Module_parameters_equal_the_specs_without_allocating()
    {
        using var model = new ZImageTransformer(ZImageConfig.Turbo, new Device(DeviceType.META)); // meta: shapes only
        var actual = model.named_parameters().Select(p => (p.name, Shape(p.parameter.shape))).ToList();
        Assert.Equal(ZImageSpecs.Transformer(ZImageConfig.Turbo).Select(s => (s.Name, Shape(s.Shape))).ToList(), actual);
        Assert.All(model.parameters(), p => Assert.False(p.requires_grad));
        Assert.Empty(model.named_buffers());
    }

    [Theory, MemberData(nameof(DitCases))]
    public void Config_inferred_from_tensors_matches_the_case(string caseName)
    {
        using var c = new ZImageCase(caseName);
        var j = c.Json.GetProperty("config");
        var cfg = c.Config();
        int I(string k) => j.GetProperty(k).GetInt32();
        Assert.Equal((I("dim"), I("n_layers"), I("n_refiner_layers"), I("n_heads"), I("n_kv_heads"), I("cap_feat_dim"), I("in_channels")),
            (cfg.Dim, cfg.NLayers, cfg.NRefinerLayers, cfg.NHeads, cfg.NKvHeads, cfg.CapFeatDim, cfg.InChannels));
        Assert.Equal((I("head_dim"), I("adaln_dim"), I("ffn_hidden"), I("t_embedder_mid"), I("frequency_embedding_size"), I("patch_dim")),
            (cfg.HeadDim, cfg.AdalnDim, cfg.FfnHidden, cfg.TEmbedderHidden, cfg.FrequencyEmbeddingSize, cfg.PatchDim));
        Assert.Equal(j.GetProperty("axes_dims").EnumerateArray().Select(x => x.GetInt32()), cfg.AxesDims);
        Assert.Equal((j.GetProperty("norm_eps").GetDouble(), j.GetProperty("rope_theta").GetDouble(), j.GetProperty("t_scale").GetDouble()),
            (cfg.NormEps, cfg.RopeTheta, cfg.TScale));
        // Specs of the inferred config = the fixture's tensor list, names, shapes and order.
        var expected = c.Json.GetProperty("weights").GetProperty("names_and_shapes").EnumerateObject()
            .Select(p => (p.Name, Shape(p.Value.EnumerateArray().Select(x => x.GetInt64()).ToArray()))).ToList();
        Assert.Equal(expected, ZImageSpecs.Transformer(cfg).Select(s => (s.Name, Shape(s.Shape))).ToList());
    }

    [Fact]
    public void Diffusers_config_json_round_trips_to_the_turbo_preset()
    {
        string dir = Directory.CreateTempSubdirectory("zimage-config-").FullName;
        try
        {
            // The released transformer/config.json, verbatim values (REFERENCE-NOTES "Z-Image-Turbo facts").
            string released = """
                {"_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.36.0.dev0", "all_f_patch_size": [1], "all_patch_size": [2],
                 "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "cap_feat_dim": 2560, "dim": 3840, "in_channels": 16, "n_heads": 30,
                 "n_kv_heads": 30, "n_layers": 30, "n_refiner_layers": 2, "norm_eps": 1e-05, "qk_norm": true, "rope_theta": 256.0, "t_scale": 1000.0}
                """;
            string path = Path.Combine(dir, "config.json");
            File.WriteAllText(path, released);
            Assert.Equal(ZImageConfig.Turbo, ZImageConfig.FromDiffusersConfig(path));
            File.WriteAllText(path, ZImageConfig.Turbo.ToDiffusersConfig().ToJsonString());
            Assert.Equal(ZImageConfig.Turbo, ZImageConfig.FromDiffusersConfig(path));

            File.WriteAllText(path, released.Replace("\"t_scale\"", "\"siglip_feat_dim\": 1152, \"t_scale\""));
            var e = Assert.Throws<ArgumentException>(() => ZImageConfig.FromDiffusersConfig(path));
            Assert.Contains("siglip_feat_dim", e.Message);
            File.WriteAllText(path, released.Replace("\"n_kv_heads\": 30", "\"n_kv_heads\": 10"));
            Assert.Contains("n_kv_heads", Assert.Throws<ArgumentException>(() => ZImageConfig.FromDiffusersConfig(path)).Message);
            File.WriteAllText(path, released.Replace("[32, 48, 48]", "[32, 48, 40]"));
            Assert.Contains("axes_dims", Assert.Throws<ArgumentException>(() => ZImageConfig.FromDiffusersConfig(path)).Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Patchify_uses_the_channel_fastest_order_and_unpatchify_inverts_it()
    {
        using var scope = NewDisposeScope();
        var lat = randn(2, 16, 6, 10);
        var tok = ZImagePatches.Patchify(lat);
        Assert.Equal(new long[] { 2, 15, 64 }, tok.shape);
        // token h*(W/2)+w, feature ph*32 + pw*16 + c  <->  latents[b, c, 2h+ph, 2w+pw]
        foreach (var (b, h, w, ph, pw, ch) in new[] { (0, 0, 0, 0, 0, 0), (1, 2, 4, 1, 0, 7), (0, 1, 3, 0, 1, 15), (1, 2, 1, 1, 1, 3) })
            Assert.Equal(lat[b, ch, 2 * h + ph, 2 * w + pw].item<float>(), tok[b, h * 5 + w, ph * 32 + pw * 16 + ch].item<float>());
        Assert.True(ZImagePatches.Unpatchify(tok, 3, 5).eq(lat).all().item<bool>());
        Assert.Throws<ArgumentException>(() => ZImagePatches.Patchify(randn(1, 16, 5, 4)));
    }

    [Theory, MemberData(nameof(DitCases))]
    public void Single_file_naming_loads_to_the_same_outputs(string caseName)
    {
        using var c = new ZImageCase(caseName);
        using var scope = NewDisposeScope();
        string dir = Directory.CreateTempSubdirectory("zimage-single-").FullName;
        try
        {
            // The ComfyUI/single-file names (prefix, x_embedder, final_layer, fused qkv, out, q_norm/k_norm, extra norm_final).
            var tensors = new List<(string, Tensor)>();
            using (var w = SafetensorsFile.Open(c.WeightsPath))
            {
                const string P = ZImageCheckpoint.SingleFilePrefix;
                foreach (var e in w.Entries)
                {
                    string n = e.Name;
                    if (n.EndsWith(".attention.to_k.weight") || n.EndsWith(".attention.to_v.weight")) continue;
                    if (n.EndsWith(".attention.to_q.weight"))
                    {
                        string p = n[..^"to_q.weight".Length];
                        tensors.Add((P + p + "qkv.weight", cat([w.Load(p + "to_q.weight"), w.Load(p + "to_k.weight"), w.Load(p + "to_v.weight")], 0)));
                        continue;
                    }
                    n = n.Replace("all_x_embedder.2-1.", "x_embedder.").Replace("all_final_layer.2-1.", "final_layer.")
                        .Replace(".attention.to_out.0.", ".attention.out.").Replace(".attention.norm_q.", ".attention.q_norm.").Replace(".attention.norm_k.", ".attention.k_norm.");
                    tensors.Add((P + n, w.Load(e.Name)));
                }
                tensors.Add((P + "norm_final.weight", ones(c.Config().Dim)));
            }
            string path = Path.Combine(dir, "z_image_turbo.safetensors");
            SafetensorsWriter.Write(path, tensors);

            using var single = SafetensorsFile.Open(path);
            Assert.True(ZImageCheckpoint.IsZImage(single.Entries.Select(e => e.Name)));
            Assert.True(ZImageCheckpoint.IsSingleFile(single.Entries.Select(e => e.Name)));
            Assert.Equal(c.Config(), ZImageConfig.FromTensors(single));
            using var fromSingle = ZImageTransformer.Load(single, ZImageConfig.FromTensors(single));
            using var reference = c.LoadModel();
            var expected = reference.state_dict();
            foreach (var (name, t) in fromSingle.state_dict()) Assert.True(t.eq(expected[name]).all().item<bool>(), $"{name} differs");

            var x = ZImagePatches.Patchify(c.T("latents"));
            long gh = c.T("latents").shape[2] / 2, gw = c.T("latents").shape[3] / 2;
            var a = fromSingle.Forward(x, gh, gw, c.T("t"), c.Captions());
            var b = reference.Forward(x, gh, gw, c.T("t"), c.Captions());
            Assert.True(a.eq(b).all().item<bool>(), "single-file outputs differ from the diffusers-named ones");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Family_detection_by_tensor_names()
    {
        using var c = new ZImageCase(Fixtures.CaseNames("zimage-dit-").First());
        Assert.True(ZImageCheckpoint.IsZImage(c.Json.GetProperty("weights").GetProperty("names_and_shapes").EnumerateObject().Select(p => p.Name)));
        Assert.False(ZImageCheckpoint.IsSingleFile(c.Json.GetProperty("weights").GetProperty("names_and_shapes").EnumerateObject().Select(p => p.Name)));
        var flux = Fixtures.CaseNames("flux2-dit-").Select(n => Path.Combine(Fixtures.CaseDir(n), "weights.safetensors")).FirstOrDefault(File.Exists);
        if (flux is not null)
        {
            using var f = SafetensorsFile.Open(flux);
            Assert.False(ZImageCheckpoint.IsZImage(f.Entries.Select(e => e.Name)));
        }
        Assert.False(ZImageCheckpoint.IsZImage(["layers.0.adaLN_modulation.0.weight", "x_embedder.weight"]));
    }

    [Fact]
    public void Missing_and_unexpected_tensors_are_refused_by_name()
    {
        using var c = new ZImageCase(Fixtures.CaseNames("zimage-dit-").First());
        using var scope = NewDisposeScope();
        string dir = Directory.CreateTempSubdirectory("zimage-strict-").FullName;
        try
        {
            var tensors = new List<(string, Tensor)>();
            using (var w = SafetensorsFile.Open(c.WeightsPath))
                foreach (var e in w.Entries.Where(e => e.Name != "layers.1.attention.norm_k.weight"))
                    tensors.Add((e.Name, w.Load(e.Name)));
            tensors.Add(("layers.9.attention.to_q.weight", zeros(4, 4)));
            string path = Path.Combine(dir, "broken.safetensors");
            SafetensorsWriter.Write(path, tensors);
            using var src = SafetensorsFile.Open(path);
            var e1 = Assert.Throws<InvalidDataException>(() => ZImageTransformer.Load(src, c.Config()));
            Assert.Contains("layers.1.attention.norm_k.weight", e1.Message);
            Assert.Contains("layers.9.attention.to_q.weight", e1.Message);
            output.WriteLine(e1.Message);

            // Single-file naming: the same refusal, under the module's names.
            string single = Path.Combine(dir, "single.safetensors");
            SafetensorsWriter.Write(single, tensors.Select(t => (ZImageCheckpoint.SingleFilePrefix + t.Item1.Replace("all_x_embedder.2-1.", "x_embedder."), t.Item2)));
            using var src2 = SafetensorsFile.Open(single);
            var e2 = Assert.Throws<InvalidDataException>(() => ZImageTransformer.Load(src2, c.Config()));
            Assert.Contains("layers.1.attention.norm_k.weight", e2.Message);
            Assert.Contains("layers.9.attention.to_q.weight", e2.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Forward_validates_its_inputs()
    {
        using var c = new ZImageCase(Fixtures.CaseNames("zimage-dit-").First());
        using var scope = NewDisposeScope();
        using var model = c.LoadModel();
        var cap = randn(5, model.Config.CapFeatDim);
        Assert.Contains("x must be", Assert.Throws<ArgumentException>(() => model.Forward(randn(1, 12, 64), 3, 5, ones(1), [cap])).Message);
        Assert.Contains("t must be", Assert.Throws<ArgumentException>(() => model.Forward(randn(1, 15, 64), 3, 5, ones(2), [cap])).Message);
        Assert.Contains("caption", Assert.Throws<ArgumentException>(() => model.Forward(randn(2, 15, 64), 3, 5, ones(2), [cap])).Message);
        Assert.Contains("captions[0]", Assert.Throws<ArgumentException>(() => model.Forward(randn(1, 15, 64), 3, 5, ones(1), [randn(0, model.Config.CapFeatDim)])).Message);
        Assert.Contains("axes_lens", Assert.Throws<ArgumentException>(() => model.Forward(randn(1, 513, 64), 513, 1, ones(1), [cap])).Message);
    }

    [Fact]
    public void Random_weights_stream_tensor_by_tensor_into_a_loadable_checkpoint()
    {
        using var c = new ZImageCase(Fixtures.CaseNames("zimage-dit-").First());
        using var scope = NewDisposeScope();
        var cfg = c.Config();
        string dir = Directory.CreateTempSubdirectory("zimage-random-").FullName;
        try
        {
            var specs = ZImageSpecs.Transformer(cfg, ScalarType.BFloat16);
            SafetensorsWriter.WriteSharded(dir, "diffusion_pytorch_model", specs, s => ZImageSpecs.RandomTensor(s, 7), 1 << 20);
            using var src = Checkpoint.Open(dir);
            using var model = ZImageTransformer.Load(src, ZImageConfig.FromTensors(src), ScalarType.BFloat16);
            var y = model.Forward(randn(1, 15, 64), 3, 5, tensor(new[] { 0.5f }), [randn(7, cfg.CapFeatDim)]);
            Assert.False(y.isnan().any().item<bool>());
            Assert.True(ZImageSpecs.RandomTensor(specs[10], 7).eq(ZImageSpecs.RandomTensor(specs[10], 7)).all().item<bool>());
        }
        finally { Directory.Delete(dir, true); }
    }
}
