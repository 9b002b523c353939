using System.Buffers;
using System.Globalization;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace InferenceServer.Models.Text;

/// <summary>
/// The Qwen2/Qwen3 <c>Split</c> pre-tokenizer (behaviour Isolated), written as a scanner over code points:
/// <code>(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+</code>
/// A .NET <see cref="System.Text.RegularExpressions.Regex"/> classifies UTF-16 code units, so a supplementary-plane
/// letter or digit (a surrogate pair, category Cs) would match none of <c>\p{L}</c>/<c>\p{N}</c>; here every
/// class test is made on the whole code point (<see cref="Rune"/>), as Oniguruma and JavaScript's <c>u</c> flag do.
/// The alternatives are tried in order at each position, each with the longest match its backtracking yields.
/// </summary>
public sealed class Qwen3PreTokenizer : PreTokenizer
{
    /// <summary>The shared instance (the scanner has no state).</summary>
    public static Qwen3PreTokenizer Instance { get; } = new();

    /// <inheritdoc/>
    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) => Split(text ?? "");

    /// <inheritdoc/>
    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => Split(text);

    /// <summary>Every piece of <paramref name="text"/> as (offset, length) in UTF-16 code units; the pieces tile the text.</summary>
    public static List<(int Offset, int Length)> Split(ReadOnlySpan<char> text)
    {
        var pieces = new List<(int, int)>();
        int p = 0;
        while (p < text.Length)
        {
            int end = MatchAt(text, p);
            pieces.Add((p, end - p));
            p = end;
        }
        return pieces;
    }

    enum Kind { Letter, Number, CrLf, Space, Other }

    static Kind Classify(ReadOnlySpan<char> s, int i, out int width)
    {
        if (Rune.DecodeFromUtf16(s[i..], out var r, out width) != OperationStatus.Done) { width = 1; return Kind.Other; }
        if (r.Value is '\r' or '\n') return Kind.CrLf;
        if (Rune.IsWhiteSpace(r)) return Kind.Space;
        return Rune.GetUnicodeCategory(r) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => Kind.Letter,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => Kind.Number,
            _ => Kind.Other,
        };
    }

    /// <summary>End (exclusive) of the match starting at <paramref name="p"/>; some alternative always matches.</summary>
    static int MatchAt(ReadOnlySpan<char> s, int p)
    {
        // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d) - case-insensitive with Unicode simple case folding (U+017F folds to s).
        if (s[p] == '\'' && p + 1 < s.Length)
        {
            char a = char.ToLowerInvariant(s[p + 1]), b = p + 2 < s.Length ? char.ToLowerInvariant(s[p + 2]) : '\0';
            if (a is 's' or 't' or 'm' or 'd' or '\u017F') return p + 2;
            if ((a == 'r' || a == 'v') && b == 'e') return p + 3;
            if (a == 'l' && b == 'l') return p + 3;
        }

        var kind = Classify(s, p, out int w);
        int next = p + w;

        // 2. [^\r\n\p{L}\p{N}]?\p{L}+
        int lettersFrom = kind == Kind.Letter ? p
            : kind is Kind.Space or Kind.Other && next < s.Length && Classify(s, next, out _) == Kind.Letter ? next : -1;
        if (lettersFrom >= 0) return SkipWhile(s, lettersFrom, k => k == Kind.Letter);

        // 3. \p{N}
        if (kind == Kind.Number) return next;

        // 4. ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        int othersFrom = kind == Kind.Other ? p
            : s[p] == ' ' && next < s.Length && Classify(s, next, out _) == Kind.Other ? next : -1;
        if (othersFrom >= 0)
        {
            int e = SkipWhile(s, othersFrom, k => k == Kind.Other);
            return SkipWhile(s, e, k => k == Kind.CrLf);
        }

        // Whitespace from here on: the run of \s starting at p.
        int runEnd = SkipWhile(s, p, k => k is Kind.Space or Kind.CrLf);

        // 5. \s*[\r\n]+ - backtracking leaves the match just after the run's last CR/LF.
        for (int i = runEnd - 1; i >= p; i--)
            if (s[i] is '\r' or '\n') return i + 1;

        // 6. \s+(?!\S) - the whole run at the end of the text, else the run minus its last character.
        if (runEnd == s.Length) return runEnd;
        int lastStart = runEnd - (char.IsLowSurrogate(s[runEnd - 1]) ? 2 : 1);
        if (lastStart > p) return lastStart;

        // 7. \s+
        return runEnd;
    }

    static int SkipWhile(ReadOnlySpan<char> s, int i, Func<Kind, bool> accept)
    {
        while (i < s.Length && accept(Classify(s, i, out int w))) i += w;
        return i;
    }
}
