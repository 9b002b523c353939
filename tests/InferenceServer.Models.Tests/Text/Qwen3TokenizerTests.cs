using System.Text;
using System.Text.Json;
using InferenceServer.Models.Text;
using InferenceServer.Tests.Shared;

namespace InferenceServer.Models.Tests.Text;

/// <summary>The Qwen3 tokenizer and klein template against every <c>qwen3-tokenizer*/cases.json</c>, one test per case.</summary>
public class Qwen3TokenizerTests
{
    static readonly Lazy<Qwen3Tokenizer> tokenizer = new(() => Qwen3Tokenizer.Load());
    static readonly Dictionary<string, JsonDocument> caseFiles = Fixtures.CaseNames("qwen3-tokenizer").ToDictionary(
        folder => folder, folder => JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Fixtures.CaseDir(folder), "cases.json"))));

    static Qwen3Tokenizer Tok => tokenizer.Value;

    /// <summary>One row per (case folder, case name).</summary>
    public static TheoryData<string, string> CaseNames()
    {
        var data = new TheoryData<string, string>();
        foreach (var (folder, doc) in caseFiles)
            foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray()) data.Add(folder, c.GetProperty("name").GetString()!);
        if (data.Count == 0) throw new InvalidOperationException($"no qwen3-tokenizer* case under {Fixtures.Root}");
        return data;
    }

    static JsonElement Case(JsonElement root, string name) =>
        root.GetProperty("cases").EnumerateArray().Single(c => c.GetProperty("name").GetString() == name);

    static int[] Ints(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(CaseNames))]
    public void Matches_reference_case(string folder, string name)
    {
        var root = caseFiles[folder].RootElement;
        var c = Case(root, name);
        string prompt = c.GetProperty("prompt").GetString()!;
        int maxLength = root.GetProperty("max_length").GetInt32();

        int[] ids = Tok.Encode(prompt);
        Assert.Equal(Ints(c.GetProperty("ids")), ids);
        Assert.Equal(c.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!), Tok.IdsToTokens(ids));
        Assert.Equal(c.GetProperty("decoded").GetString(), Tok.Decode(ids));

        string template = Qwen3Tokenizer.ApplyChatTemplate(prompt);
        Assert.Equal(c.GetProperty("template_text").GetString(), template);
        Assert.Equal(Ints(c.GetProperty("template_ids")), Tok.Encode(template));

        var p = Tok.EncodePrompt(prompt, maxLength);
        Assert.Equal(c.GetProperty("template_len").GetInt32(), p.OriginalLength);
        Assert.Equal(c.GetProperty("truncated").GetBoolean(), p.Truncated);
        Assert.Equal(c.GetProperty("num_valid").GetInt32(), p.Length);
        Assert.Equal(Ints(c.GetProperty("input_ids")), p.InputIds);
        Assert.Equal(Ints(c.GetProperty("attention_mask")), p.AttentionMask);
        Assert.Equal(c.GetProperty("decoded_input_ids_valid").GetString(), Tok.Decode(p.InputIds.Take(p.Length)));
        Assert.Equal(root.GetProperty("pad_token_id").GetInt32(), Tok.PadId);

        // The UTF-8 entry point gives the same result.
        Assert.Equal(p.InputIds, Tok.EncodePrompt(Encoding.UTF8.GetBytes(prompt), maxLength).InputIds);
    }

    [Fact]
    public void Invalid_utf8_prompt_is_refused_clearly()
    {
        var e = Assert.Throws<ArgumentException>(() => Tok.EncodePrompt(new byte[] { (byte)'a', 0xC3, 0x28, (byte)'b' }, 512));
        Assert.Contains("UTF-8", e.Message);
        Assert.Throws<ArgumentException>(() => Tok.Encode(new byte[] { 0xED, 0xA0, 0x80 })); // an encoded surrogate
        Assert.Throws<ArgumentException>(() => Tok.Encode("a\uD800b")); // unpaired surrogate in a string
    }

    [Fact]
    public void Empty_batch_is_refused() =>
        Assert.Throws<ArgumentException>(() => Tok.EncodePrompts([], 512));

    [Fact]
    public void Over_long_prompt_is_cut_at_max_length_and_flagged()
    {
        string prompt = string.Concat(Enumerable.Repeat("a red fox ", 400));
        var p = Tok.EncodePrompt(prompt, 512);
        Assert.True(p.Truncated);
        Assert.Equal(512, p.Length);
        Assert.True(p.OriginalLength > 512);
        Assert.All(p.AttentionMask, m => Assert.Equal(1, m));
        Assert.Equal(Tok.Encode(Qwen3Tokenizer.ApplyChatTemplate(prompt)).Take(512), p.InputIds);

        var shortOne = Tok.EncodePrompts(["a cat", prompt], 16);
        Assert.False(shortOne[0].Truncated);
        Assert.Equal(14, shortOne[0].Length);
        Assert.True(shortOne[1].Truncated);
    }

    [Fact]
    public void Decode_replaces_invalid_utf8_and_keeps_added_tokens()
    {
        Assert.Equal("é<|im_end|> x", Tok.Decode(Tok.Encode("é<|im_end|> x")));
        // Id 145 is the byte-level character for byte 0xD5, a UTF-8 lead byte with nothing after it.
        Assert.Equal(["Õ", "a"], Tok.IdsToTokens([145, 64]));
        Assert.Equal("\uFFFDa", Tok.Decode([145, 64]));
        Assert.Equal("\uFFFD<|im_end|>a", Tok.Decode([145, 151645, 64]));
    }

    [Fact]
    public void Concurrent_use_gives_the_same_ids()
    {
        var prompts = caseFiles.Values.SelectMany(d => d.RootElement.GetProperty("cases").EnumerateArray())
            .Select(c => c.GetProperty("prompt").GetString()!).ToArray();
        var expected = prompts.Select(p => Tok.EncodePrompt(p, 512).InputIds).ToArray();
        Parallel.For(0, prompts.Length * 8, i => Assert.Equal(expected[i % prompts.Length], Tok.EncodePrompt(prompts[i % prompts.Length], 512).InputIds));
    }
}
