using System.Text.Json;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Text;
using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Qwen3;

/// <summary>The klein Qwen3 text encoder against every <c>qwen3-encoder*</c> fixture case (config and tolerances read from the case).</summary>
public class Qwen3TextEncoderTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => Fixtures.Cases("qwen3-encoder");

    sealed record Case(string Dir, JsonElement Json, Qwen3Config Config)
    {
        public string Weights => Path.Combine(Dir, "weights.safetensors");
        public string Io => Path.Combine(Dir, "io.safetensors");
        public (double Atol, double Rtol) Tolerance(string kind) =>
            (Json.GetProperty("suggested_tolerance").GetProperty(kind).GetProperty("atol").GetDouble(),
             Json.GetProperty("suggested_tolerance").GetProperty(kind).GetProperty("rtol").GetDouble());
    }

    static Case Read(string name)
    {
        string dir = Fixtures.CaseDir(name);
        var json = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "case.json"))).RootElement.Clone();
        using var io = SafetensorsFile.Open(Path.Combine(dir, "io.safetensors"));
        var config = Qwen3Config.FromJson(json.GetProperty("config").GetRawText()) with
        {
            OutputLayers = [.. json.GetProperty("output_layers").EnumerateArray().Select(e => e.GetInt32())],
            MaxLength = (int)io["input_ids"].Shape[1],
        };
        return new Case(dir, json, config);
    }

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Fp32_hidden_states_and_output_match_reference(string name)
    {
        var c = Read(name);
        var (atol, rtol) = c.Tolerance("float32");
        using var scope = NewDisposeScope();
        using var io = SafetensorsFile.Open(c.Io);
        var ids = io.Load("input_ids");
        var mask = io.Load("attention_mask");

        using var full = Qwen3TextEncoder.Load(c.Weights, c.Config, ScalarType.Float32, allLayers: true);
        var states = full.HiddenStates(ids, mask);
        Assert.Equal(c.Config.NumHiddenLayers + 1, states.Count);
        for (int k = 0; k < states.Count; k++)
        {
            var expected = io.Load($"hidden_states.{k}");
            output.WriteLine($"{name} hidden_states.{k}: max |diff| {TensorAssert.MaxAbsDiff(states[k], expected):G3}");
            TensorAssert.Close(states[k], expected, atol, rtol, $"{name} hidden_states.{k}");
        }

        // The klein encoder proper builds only the layers its output needs.
        using var encoder = Qwen3TextEncoder.Load(c.Weights, c.Config, ScalarType.Float32);
        Assert.Equal(c.Config.OutputLayers.Max(), encoder.Depth);
        var outputExpected = io.Load("output");
        var actual = encoder.call(ids, mask);
        Assert.Equal([ids.shape[0], ids.shape[1], c.Config.OutputDim], actual.shape);
        output.WriteLine($"{name} output: max |diff| {TensorAssert.MaxAbsDiff(actual, outputExpected):G3} (atol {atol}, rtol {rtol})");
        TensorAssert.Close(actual, outputExpected, atol, rtol, $"{name} output");
        TensorAssert.Close(full.call(ids, mask), outputExpected, atol, rtol, $"{name} output (all layers built)");
    }

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Bf16_output_is_close_to_reference(string name)
    {
        var c = Read(name);
        var (atol, rtol) = c.Tolerance("bf16_compute");
        double meanAbsMax = c.Json.GetProperty("suggested_tolerance").GetProperty("bf16_compute").GetProperty("mean_abs_max").GetDouble();
        using var scope = NewDisposeScope();
        using var io = SafetensorsFile.Open(c.Io);
        using var encoder = Qwen3TextEncoder.Load(c.Weights, c.Config, ScalarType.BFloat16);
        var actual = encoder.call(io.Load("input_ids"), io.Load("attention_mask"));
        Assert.Equal(ScalarType.BFloat16, actual.dtype);
        var expected = io.Load("output");
        double meanAbs = (actual.to(ScalarType.Float32) - expected).abs().mean().item<float>();
        output.WriteLine($"{name} bf16 output: max |diff| {TensorAssert.MaxAbsDiff(actual, expected):G3}, mean |diff| {meanAbs:G3}");
        TensorAssert.Close(actual, expected, atol, rtol, $"{name} bf16 output");
        Assert.True(meanAbs <= meanAbsMax, $"mean |diff| {meanAbs} > {meanAbsMax}");
    }

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Tokenizer_produces_the_case_inputs(string name)
    {
        var c = Read(name);
        var tokenizer = Qwen3Tokenizer.Load();
        var prompts = c.Json.GetProperty("prompts").EnumerateArray().Select(p => p.GetProperty("prompt").GetString()!).ToList();
        var encoded = tokenizer.EncodePrompts(prompts, c.Config.MaxLength);
        using var scope = NewDisposeScope();
        using var io = SafetensorsFile.Open(c.Io);
        var ids = io.Load("input_ids");
        var mask = io.Load("attention_mask");
        for (int b = 0; b < prompts.Count; b++)
        {
            Assert.Equal(ids[b].data<long>().Select(x => (int)x), encoded[b].InputIds);
            Assert.Equal(mask[b].data<long>().Select(x => (int)x), encoded[b].AttentionMask);
        }
        // Prompt text to klein features in one call.
        using var encoder = Qwen3TextEncoder.Load(c.Weights, c.Config);
        var (atol, rtol) = c.Tolerance("float32");
        TensorAssert.Close(encoder.Encode(encoded), io.Load("output"), atol, rtol, $"{name} output from prompts");
    }

    [Fact]
    public void Cards_load_with_klein_numbers()
    {
        var q4 = Qwen3Config.FromCard("qwen3-4b");
        Assert.Equal((2560, 36, 32, 8, 128, 9728), (q4.HiddenSize, q4.NumHiddenLayers, q4.NumAttentionHeads, q4.NumKeyValueHeads, q4.HeadDim, q4.IntermediateSize));
        Assert.Equal(7680, q4.OutputDim);
        Assert.Equal(12288, Qwen3Config.FromCard("qwen3-8b").OutputDim);
        var tiny = Qwen3Config.FromCard("qwen3-tiny");
        Assert.Equal(192, tiny.OutputDim);
        Assert.Equal(Read("qwen3-encoder").Config, tiny);
    }

    [Fact]
    public void Repeated_calls_leave_no_live_tensors()
    {
        var c = Read("qwen3-encoder");
        using var encoder = Qwen3TextEncoder.Load(c.Weights, c.Config with { MaxLength = 32 });
        var prompts = Qwen3Tokenizer.Load().EncodePrompts(["a cat", "two dogs"], 32);
        static long Live() => TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        long before = 0;
        for (int i = 0; i < 30; i++)
        {
            if (i == 2) before = Live();
            encoder.Encode(prompts).Dispose();
        }
        Assert.True(before > 0, "tensor statistics are not being counted");
        Assert.Equal(before, Live());
    }

    [Fact]
    public void Bad_inputs_are_refused()
    {
        var c = Read("qwen3-encoder");
        using var scope = NewDisposeScope();
        using var encoder = new Qwen3TextEncoder(c.Config with { NumHiddenLayers = 2, OutputLayers = [1, 2] });
        Assert.Throws<ArgumentException>(() => encoder.call(zeros(0, 8, dtype: ScalarType.Int64), zeros(0, 8, dtype: ScalarType.Int64)));
        Assert.Throws<ArgumentException>(() => encoder.call(zeros(1, 8, dtype: ScalarType.Int64), zeros(1, 7, dtype: ScalarType.Int64)));
        Assert.Throws<ArgumentException>(() => encoder.call(zeros(2, 8, dtype: ScalarType.Int64), zeros(2, 8, dtype: ScalarType.Int64))); // no real token
        Assert.Throws<ArgumentException>(() => encoder.Encode([]));
        Assert.Throws<InvalidDataException>(() => Qwen3Config.FromJson("""{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 2, "head_dim": 4, "rope_theta": 1e6, "rms_norm_eps": 1e-6}"""));
    }
}

/// <summary>Loading the text encoder from a diffusers/HF <c>text_encoder/</c> folder: sharded BF16 + index + config.json.</summary>
public class Qwen3TextEncoderLoadTests
{
    public static TheoryData<string> Cases => Fixtures.Cases("qwen3-encoder");

    [Theory, MemberData(nameof(Cases))]
    public void Sharded_hf_folder_loads_like_the_single_file(string caseName)
    {
        string caseDir = Fixtures.CaseDir(caseName);
        var card = Qwen3Config.FromCard("qwen3-tiny");
        string dir = Directory.CreateTempSubdirectory("qwen3-sharded-").FullName;
        try
        {
            using (var single = SafetensorsFile.Open(Path.Combine(caseDir, "weights.safetensors")))
            {
                // A Qwen3ForCausalLM checkpoint as HF writes it: bf16 shards, an index, and an (untied) lm_head we never read.
                var specs = single.Entries.Select(e => new TensorSpec(e.Name, e.DType, e.Shape)).Append(new TensorSpec("lm_head.weight", SafetensorsDType.BF16, [4, 64])).ToList();
                SafetensorsWriter.WriteSharded(dir, "model", specs, s => s.Name == "lm_head.weight" ? zeros(4, 64, dtype: ScalarType.BFloat16) : single.Load(s.Name), maxShardBytes: 4_000_000);
            }
            File.WriteAllText(Path.Combine(dir, "config.json"),
                JsonDocument.Parse(File.ReadAllBytes(Path.Combine(caseDir, "case.json"))).RootElement.GetProperty("config").GetRawText());
            Assert.True(Directory.GetFiles(dir, "model-*.safetensors").Length > 1);

            var config = Qwen3Config.FromHfConfig(Path.Combine(dir, "config.json"), card);
            using var scope = NewDisposeScope();
            using var io = SafetensorsFile.Open(Path.Combine(caseDir, "io.safetensors"));
            var ids = io.Load("input_ids");
            var mask = io.Load("attention_mask");
            using var fromFolder = Qwen3TextEncoder.Load(dir, config);
            using var fromFile = Qwen3TextEncoder.Load(Path.Combine(caseDir, "weights.safetensors"), card);
            Assert.Equal(0.0, TensorAssert.MaxAbsDiff(fromFolder.call(ids, mask), fromFile.call(ids, mask)));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory, MemberData(nameof(Cases))]
    public void Unknown_or_missing_tensors_are_refused(string caseName)
    {
        string caseDir = Fixtures.CaseDir(caseName);
        var card = Qwen3Config.FromCard("qwen3-tiny");
        string dir = Directory.CreateTempSubdirectory("qwen3-bad-").FullName;
        try
        {
            using (var single = SafetensorsFile.Open(Path.Combine(caseDir, "weights.safetensors")))
            {
                var kept = single.Entries.Where(e => e.Name != "model.layers.2.mlp.up_proj.weight").Select(e => (e.Name, single.Load(e.Name))).ToList();
                SafetensorsWriter.Write(Path.Combine(dir, "missing.safetensors"), kept);
                SafetensorsWriter.Write(Path.Combine(dir, "extra.safetensors"), [.. kept, ("model.layers.0.self_attn.q_proj.bias", zeros(64))]);
                foreach (var (_, t) in kept) t.Dispose();
            }
            var missing = Assert.Throws<InvalidDataException>(() => Qwen3TextEncoder.Load(Path.Combine(dir, "missing.safetensors"), card));
            Assert.Contains("model.layers.2.mlp.up_proj.weight", missing.Message);
            var extra = Assert.Throws<InvalidDataException>(() => Qwen3TextEncoder.Load(Path.Combine(dir, "extra.safetensors"), card));
            Assert.Contains("q_proj.bias", extra.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
