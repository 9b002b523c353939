using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace InferenceServer.Models.Text;

/// <summary>
/// One prompt rendered with a chat template (klein's unless a <see cref="PromptFormat"/> says otherwise) and cut/padded to a fixed length.
/// </summary>
/// <param name="InputIds">Exactly <c>max_length</c> ids: the template's ids, right-truncated, right-padded with the pad id.</param>
/// <param name="AttentionMask">1 for each real token, 0 for each pad (same length).</param>
/// <param name="Length">Real tokens kept: <c>min(OriginalLength, max_length)</c>.</param>
/// <param name="OriginalLength">Tokens of the untruncated template.</param>
public sealed record TokenizedPrompt(int[] InputIds, int[] AttentionMask, int Length, int OriginalLength)
{
    /// <summary>True when the template's tail was cut off (the prompt was too long).</summary>
    public bool Truncated => OriginalLength > InputIds.Length;
}

/// <summary>
/// The Qwen3 byte-level BPE tokenizer (<c>Qwen2Tokenizer</c> / tokenizer.json), matching Hugging Face tokenizers:
/// the 26 added tokens are matched in the raw text first; the text between them is NFC-normalised, split by
/// <see cref="Qwen3PreTokenizer"/>, mapped to bytes with the GPT-2 byte table and merged by rank.
/// The BPE merges, vocabulary and byte-level mapping are Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/>;
/// added tokens and normalisation are done here, because they must act on the raw text before anything else.
/// </summary>
public sealed class Qwen3Tokenizer
{
    /// <summary>The klein chat template (user turn, generation prompt, thinking disabled) around a prompt.</summary>
    public const string TemplatePrefix = "<|im_start|>user\n";

    /// <summary>What follows the prompt in the klein chat template.</summary>
    public const string TemplateSuffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

    readonly BpeTokenizer bpe;
    readonly string[] tokenById; // the BPE vocabulary, inverted
    readonly Dictionary<string, int> addedByText;
    readonly Dictionary<int, string> addedById;
    readonly string[] addedTexts; // longest first, for leftmost-longest matching

    /// <summary>Id used for padding (<c>&lt;|endoftext|&gt;</c>, 151643).</summary>
    public int PadId { get; }

    /// <summary>Added tokens (special or not) by id.</summary>
    public IReadOnlyDictionary<int, string> AddedTokens => addedById;

    Qwen3Tokenizer(BpeTokenizer bpe, Dictionary<string, int> added, int padId)
    {
        this.bpe = bpe;
        tokenById = new string[bpe.Vocabulary.Values.Max() + 1];
        foreach (var (token, id) in bpe.Vocabulary) tokenById[id] = token;
        addedByText = added;
        addedById = added.ToDictionary(kv => kv.Value, kv => kv.Key);
        addedTexts = [.. added.Keys.OrderByDescending(k => k.Length)];
        PadId = padId;
    }

    /// <summary>The tokenizer data shipped with the binaries (<c>models/qwen3-tokenizer</c> next to the assembly).</summary>
    public static string DefaultDirectory => Path.Combine(AppContext.BaseDirectory, "models", "qwen3-tokenizer");

    /// <summary>
    /// Loads <c>vocab.json</c>, <c>merges.txt</c> and <c>tokenizer_config.json</c> (added tokens, pad token) from a
    /// folder laid out like the Hugging Face hub's <c>tokenizer/</c>. A damaged file is an <see cref="InvalidDataException"/>
    /// naming it and what is wrong.
    /// </summary>
    public static Qwen3Tokenizer Load(string? directory = null)
    {
        directory ??= DefaultDirectory;
        string vocab = Path.Combine(directory, "vocab.json"), merges = Path.Combine(directory, "merges.txt");
        string config = Path.Combine(directory, "tokenizer_config.json");
        foreach (var f in new[] { vocab, merges, config })
            if (!File.Exists(f)) throw new FileNotFoundException($"Qwen3 tokenizer file missing: {f}", f);

        var (added, padId) = ReadConfig(config);
        BpeTokenizer bpe;
        try { bpe = CreateBpe(vocab, merges); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or ArgumentException or OverflowException)
        {
            // The library reads both files at once; reading the vocabulary alone says which one is at fault.
            string culprit = merges;
            try { CreateBpe(vocab, null); } catch (Exception) { culprit = vocab; }
            throw new InvalidDataException($"{culprit}: not a valid Qwen3 tokenizer {(culprit == vocab ? "vocabulary (a JSON object of token: id)" : "merges file (lines of two tokens)")}: {e.Message}", e);
        }
        if (bpe.Vocabulary.Count == 0) throw new InvalidDataException($"{vocab}: the vocabulary is empty");
        return new Qwen3Tokenizer(bpe, added, padId);
    }

    static BpeTokenizer CreateBpe(string vocab, string? merges) => BpeTokenizer.Create(new BpeOptions(vocab, merges)
    {
        ByteLevel = true,
        PreTokenizer = Qwen3PreTokenizer.Instance,
        Normalizer = null,
    });

    /// <summary>The added tokens (text to id) and the pad id of <c>tokenizer_config.json</c>.</summary>
    static (Dictionary<string, int> Added, int PadId) ReadConfig(string config)
    {
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        string pad;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(config));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("added_tokens_decoder", out var decoder) || decoder.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{config}: no \"added_tokens_decoder\" object");
            foreach (var p in decoder.EnumerateObject())
            {
                if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id)
                    || p.Value.ValueKind != JsonValueKind.Object || !p.Value.TryGetProperty("content", out var text) || text.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{config}: added token \"{p.Name}\" is not {{id: {{\"content\": TEXT}}}}");
                added[text.GetString()!] = id;
            }
            // pad_token is a string, or an AddedToken object with its text in "content".
            if (!root.TryGetProperty("pad_token", out var padElement)) throw new InvalidDataException($"{config}: no pad_token");
            if (padElement.ValueKind == JsonValueKind.Object && padElement.TryGetProperty("content", out var content)) padElement = content;
            pad = padElement.ValueKind == JsonValueKind.String ? padElement.GetString()! : throw new InvalidDataException($"{config}: pad_token is not a string");
        }
        catch (JsonException e) { throw new InvalidDataException($"{config}: not valid JSON ({e.Message})", e); }
        if (!added.TryGetValue(pad, out int padId)) throw new InvalidDataException($"{config}: pad token '{pad}' is not an added token");
        return (added, padId);
    }

    /// <summary>Token ids of <paramref name="text"/> (no template, no special tokens added; added-token texts in it are matched).</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.AsSpan().ContainsAnyInRange('\uD800', '\uDFFF') && !IsWellFormed(text))
            throw new ArgumentException("text contains an unpaired UTF-16 surrogate (not valid Unicode)", nameof(text));
        var ids = new List<int>(text.Length / 3 + 4);
        int start = 0;
        while (start < text.Length)
        {
            var (at, token) = FindAddedToken(text, start);
            if (at > start) EncodeOrdinary(text[start..at], ids);
            if (token is null) break;
            ids.Add(addedByText[token]);
            start = at + token.Length;
        }
        return [.. ids];
    }

    /// <summary>Token ids of UTF-8 <paramref name="utf8"/>; invalid UTF-8 is refused with an <see cref="ArgumentException"/>.</summary>
    public int[] Encode(ReadOnlySpan<byte> utf8) => Encode(DecodeUtf8Strict(utf8));

    /// <summary>The byte-level token strings (vocabulary keys) of <paramref name="ids"/>.</summary>
    public string[] IdsToTokens(IEnumerable<int> ids) =>
        [.. ids.Select(id => addedById.TryGetValue(id, out var t) ? t
            : TokenOf(id) ?? throw new ArgumentOutOfRangeException(nameof(ids), id, "id is not in the vocabulary"))];

    /// <summary>
    /// Text of <paramref name="ids"/>: byte-level tokens back to bytes, then UTF-8 (invalid sequences become U+FFFD);
    /// added tokens are written literally. No spaces are cleaned up.
    /// </summary>
    public string Decode(IEnumerable<int> ids)
    {
        var text = new StringBuilder();
        var bytes = new List<byte>();
        void Flush()
        {
            text.Append(Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes)));
            bytes.Clear();
        }
        foreach (int id in ids)
        {
            if (addedById.TryGetValue(id, out var added)) { Flush(); text.Append(added); continue; }
            string token = TokenOf(id) ?? throw new ArgumentOutOfRangeException(nameof(ids), id, "id is not in the vocabulary");
            foreach (char c in token) bytes.Add(ByteLevel.ToByte(c));
        }
        Flush();
        return text.ToString();
    }

    /// <summary>The klein chat template around <paramref name="prompt"/>.</summary>
    public static string ApplyChatTemplate(string prompt) => TemplatePrefix + prompt + TemplateSuffix;

    /// <summary>
    /// Renders <paramref name="prompt"/> with the klein chat template and tokenizes it to exactly
    /// <paramref name="maxLength"/> ids (right truncation, right padding with <see cref="PadId"/>).
    /// </summary>
    public TokenizedPrompt EncodePrompt(string prompt, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        return EncodeFixedLength(ApplyChatTemplate(prompt), maxLength);
    }

    /// <summary>
    /// Renders <paramref name="prompt"/> with <paramref name="format"/>'s template and tokenizes it to exactly its
    /// <see cref="PromptFormat.MaxLength"/> ids (right truncation, right padding with <see cref="PadId"/>).
    /// </summary>
    public TokenizedPrompt EncodePrompt(string prompt, PromptFormat format)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(format);
        return EncodeFixedLength(format.Render(prompt), format.MaxLength);
    }

    /// <summary><see cref="EncodePrompt(string, int)"/> of a UTF-8 prompt; invalid UTF-8 is refused with an <see cref="ArgumentException"/>.</summary>
    public TokenizedPrompt EncodePrompt(ReadOnlySpan<byte> utf8Prompt, int maxLength) => EncodePrompt(DecodeUtf8Strict(utf8Prompt), maxLength);

    /// <summary>Several prompts, each as <see cref="EncodePrompt(string, int)"/>; an empty batch is refused.</summary>
    public IReadOnlyList<TokenizedPrompt> EncodePrompts(IReadOnlyList<string> prompts, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("the batch holds no prompt", nameof(prompts));
        return [.. prompts.Select(p => EncodePrompt(p, maxLength))];
    }

    /// <summary>Several prompts, each as <see cref="EncodePrompt(string, PromptFormat)"/>; an empty batch is refused.</summary>
    public IReadOnlyList<TokenizedPrompt> EncodePrompts(IReadOnlyList<string> prompts, PromptFormat format)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("the batch holds no prompt", nameof(prompts));
        return [.. prompts.Select(p => EncodePrompt(p, format))];
    }

    /// <summary>Token ids of <paramref name="text"/> cut and right-padded to exactly <paramref name="maxLength"/>.</summary>
    TokenizedPrompt EncodeFixedLength(string text, int maxLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 1);
        int[] all = Encode(text);
        int n = Math.Min(all.Length, maxLength);
        var ids = new int[maxLength];
        var mask = new int[maxLength];
        all.AsSpan(0, n).CopyTo(ids);
        ids.AsSpan(n).Fill(PadId);
        mask.AsSpan(0, n).Fill(1);
        return new TokenizedPrompt(ids, mask, n, all.Length);
    }

    string? TokenOf(int id) => (uint)id < (uint)tokenById.Length ? tokenById[id] : null;

    void EncodeOrdinary(string segment, List<int> ids)
    {
        string normalized = UnicodeNfc.Normalize(segment);
        if (normalized.Length > 0) ids.AddRange(bpe.EncodeToIds(normalized));
    }

    (int At, string? Token) FindAddedToken(string text, int start)
    {
        for (int i = text.IndexOf('<', start); i >= 0; i = text.IndexOf('<', i + 1))
            foreach (var t in addedTexts)
                if (string.CompareOrdinal(text, i, t, 0, t.Length) == 0) return (i, t);
        return (text.Length, null);
    }

    static bool IsWellFormed(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            if (char.IsSurrogate(s[i])) return false;
        }
        return true;
    }

    static string DecodeUtf8Strict(ReadOnlySpan<byte> utf8)
    {
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(utf8); }
        catch (DecoderFallbackException e)
        {
            throw new ArgumentException($"the prompt is not valid UTF-8 (invalid byte sequence at byte {e.Index})", "prompt", e);
        }
    }

    /// <summary>The GPT-2 byte-to-character table, inverted.</summary>
    static class ByteLevel
    {
        static readonly Dictionary<char, byte> toByte = Build();

        public static byte ToByte(char c) => toByte.TryGetValue(c, out byte b) ? b
            : throw new InvalidDataException($"'{c}' (U+{(int)c:X4}) is not a byte-level character");

        static Dictionary<char, byte> Build()
        {
            // Printable bytes map to themselves; the other 68 map to U+0100.. in byte order.
            var map = new Dictionary<char, byte>();
            int next = 0;
            for (int b = 0; b < 256; b++)
            {
                bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
                map[(char)(printable ? b : 0x100 + next++)] = (byte)b;
            }
            return map;
        }
    }
}
