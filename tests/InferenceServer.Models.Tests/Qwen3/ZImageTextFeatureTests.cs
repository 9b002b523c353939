using System.Text.Json;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.Text;
using InferenceServer.Models.Weights;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Qwen3;

/// <summary>
/// Z-Image caption features (<see cref="PromptFormat.ZImage"/>) against every zimage-text* case: the real tokenizer's ids
/// and masks exactly (tokens.json and io.safetensors), every HF hidden state, and the per-prompt <c>cap_feats</c>
/// (<c>hidden_states[-2]</c>, pad rows dropped) through the entry points a pipeline uses: <see cref="Qwen3Tokenizer.EncodePrompts(IReadOnlyList{string}, PromptFormat)"/>
/// and <see cref="Qwen3TextEncoder.EncodeCaptions"/>.
/// </summary>
public class ZImageTextFeatureTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => Fixtures.Cases("zimage-text");

    static readonly Lazy<Qwen3Tokenizer> tokenizer = new(() => Qwen3Tokenizer.Load());

    sealed record Case(string Name, string Dir, JsonElement Json, JsonElement Tokens, Qwen3Config Architecture)
    {
        public string Weights => Path.Combine(Dir, "weights.safetensors");
        public (double Atol, double Rtol) Tolerance =>
            (Json.GetProperty("tolerance").GetProperty("atol").GetDouble(), Json.GetProperty("tolerance").GetProperty("rtol").GetDouble());
        public IReadOnlyList<string> Prompts => [.. Tokens.GetProperty("cases").EnumerateArray().Select(c => c.GetProperty("prompt").GetString()!)];
    }

    static Case Read(string name)
    {
        string dir = Fixtures.CaseDir(name);
        var json = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "case.json"))).RootElement.Clone();
        var tokens = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, json.GetProperty("tokens_file").GetString()!.Split(' ')[0]))).RootElement.Clone();
        // The tiny Qwen3 is given inline as an HF config.json (no output_layers: the prompt format chooses them).
        return new Case(name, dir, json, tokens, Qwen3Config.FromJson(json.GetProperty("config").GetRawText(), name));
    }

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Token_ids_and_masks_are_exact(string name)
    {
        var c = Read(name);
        Assert.Equal(PromptFormat.ZImage.MaxLength, c.Tokens.GetProperty("max_length").GetInt32());
        Assert.Equal(tokenizer.Value.PadId, c.Tokens.GetProperty("pad_token_id").GetInt32());
        var tokenized = tokenizer.Value.EncodePrompts(c.Prompts, PromptFormat.ZImage);
        using var io = SafetensorsFile.Open(Path.Combine(c.Dir, "io.safetensors"));
        using var ids = io.Load("input_ids");
        using var mask = io.Load("attention_mask");
        int i = 0;
        foreach (var expected in c.Tokens.GetProperty("cases").EnumerateArray())
        {
            var p = tokenized[i];
            string what = $"{name} prompt {i} ({expected.GetProperty("name").GetString()})";
            Assert.Equal(expected.GetProperty("template_text").GetString(), PromptFormat.ZImage.Render(c.Prompts[i]));
            Assert.Equal(expected.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()), p.InputIds);
            Assert.Equal(expected.GetProperty("attention_mask").EnumerateArray().Select(e => e.GetInt32()), p.AttentionMask);
            Assert.Equal(expected.GetProperty("num_valid").GetInt32(), p.Length);
            Assert.Equal(expected.GetProperty("template_len").GetInt32(), p.OriginalLength);
            Assert.Equal(expected.GetProperty("truncated").GetBoolean(), p.Truncated);
            Assert.Equal(ids[i].data<long>().ToArray(), p.InputIds.Select(v => (long)v));
            Assert.Equal(mask[i].data<long>().ToArray(), p.AttentionMask.Select(v => (long)v));
            output.WriteLine($"{what}: {p.Length} real tokens of {p.OriginalLength}, ids and mask exact");
            i++;
        }
        Assert.Equal(ids.shape[0], i);
    }

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Hidden_states_and_caption_features_match(string name)
    {
        var c = Read(name);
        var (atol, rtol) = c.Tolerance;
        using var scope = NewDisposeScope();
        using var io = SafetensorsFile.Open(Path.Combine(c.Dir, "io.safetensors"));
        var ids = io.Load("input_ids");
        var mask = io.Load("attention_mask");

        // Every HF hidden state, from a model with all layers and the final norm built.
        using (var full = Qwen3TextEncoder.Load(c.Weights, PromptFormat.ZImage.Configure(c.Architecture), allLayers: true))
        {
            var states = full.HiddenStates(ids, mask);
            Assert.Equal(c.Architecture.NumHiddenLayers + 1, states.Count);
            for (int k = 0; k < states.Count; k++) Check($"{name} hidden_states.{k}", states[k], io.Load($"hidden_states.{k}"), atol, rtol);
        }

        // What users get: hidden_states[-2] = index N-1, built only that deep (no final norm), pads dropped.
        var config = PromptFormat.ZImage.Configure(c.Architecture);
        Assert.Equal([c.Architecture.NumHiddenLayers - 1], config.OutputLayers);
        using var encoder = Qwen3TextEncoder.Load(c.Weights, config);
        Assert.Equal(c.Architecture.NumHiddenLayers - 1, encoder.Depth);
        var tokenized = tokenizer.Value.EncodePrompts(c.Prompts, PromptFormat.ZImage);
        var captions = encoder.EncodeCaptions(tokenized);
        Assert.Equal(c.Prompts.Count, captions.Count);
        var embeds = io.Load("prompt_embeds");
        for (int i = 0; i < captions.Count; i++)
        {
            var expected = io.Load($"cap_feats.{i}");
            Assert.Equal([tokenized[i].Length, c.Architecture.HiddenSize], captions[i].shape);
            Check($"{name} cap_feats.{i}", captions[i], expected, atol, rtol);
            Check($"{name} prompt_embeds[{i}] (valid rows)", captions[i], embeds[i].narrow(0, 0, tokenized[i].Length), atol, rtol);
        }
    }

    [Fact]
    public void Formats_differ_only_where_the_models_do()
    {
        var tok = tokenizer.Value;
        Assert.Equal(Qwen3Tokenizer.ApplyChatTemplate("x"), PromptFormat.Klein.Render("x"));
        Assert.Equal("<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n", PromptFormat.ZImage.Render("x"));
        Assert.Equal(tok.EncodePrompt("a cat", 512).InputIds, tok.EncodePrompt("a cat", PromptFormat.Klein).InputIds);
        Assert.Equal(tok.EncodePrompt("a cat", PromptFormat.Klein).Length - 4, tok.EncodePrompt("a cat", PromptFormat.ZImage).Length); // "<think>\n\n</think>\n\n"
        // Real Qwen3-4B (36 layers): hidden_states[-2] is index 35, the output of layer 34.
        Assert.Equal([35], PromptFormat.ZImage.OutputLayers(36));
        var card = Qwen3Config.FromCard("qwen3-4b");
        Assert.Equal([35], PromptFormat.ZImage.Configure(card).OutputLayers);
        Assert.Equal(card.OutputLayers, PromptFormat.Klein.Configure(card).OutputLayers);
        Assert.Throws<ArgumentOutOfRangeException>(() => (PromptFormat.ZImage with { HiddenStates = [-40] }).OutputLayers(36));
    }

    void Check(string what, Tensor actual, Tensor expected, double atol, double rtol)
    {
        output.WriteLine($"{what}: max |diff| {TensorAssert.MaxAbsDiff(actual, expected):G3} (atol {atol}, rtol {rtol})");
        TensorAssert.Close(actual, expected, atol, rtol, what);
    }
}
