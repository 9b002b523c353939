using System.Text;
using System.Text.RegularExpressions;
using InferenceServer.Models.Text;

namespace InferenceServer.Models.Tests.Text;

/// <summary>The code-point pre-tokenizer and the managed NFC normaliser.</summary>
public class Qwen3PreTokenizerTests
{
    // tokenizer.json's pattern. On BMP text .NET's Regex classifies exactly as HF does, so it is an oracle there.
    static readonly Regex oracle = new(@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        RegexOptions.CultureInvariant);

    static string[] Pieces(string s) => [.. Qwen3PreTokenizer.Split(s).Select(p => s.Substring(p.Offset, p.Length))];

    [Fact]
    public void Agrees_with_the_regex_on_random_bmp_text()
    {
        const string pool = "aZéß漢한 \t\r\n\u00A0\u3000\u200B07٣½'sStTreVEmMlLdD.,!?-_()<>|\"$€😀";
        var runes = pool.EnumerateRunes().Where(r => r.IsBmp).Select(r => r.ToString()).ToArray();
        var random = new Random(1234);
        for (int n = 0; n < 5000; n++)
        {
            var sb = new StringBuilder();
            int len = random.Next(0, 24);
            for (int i = 0; i < len; i++) sb.Append(runes[random.Next(runes.Length)]);
            string s = sb.ToString();
            string[] expected = [.. oracle.Matches(s).Select(m => m.Value)];
            Assert.True(expected.SequenceEqual(Pieces(s)),
                $"'{Regex.Escape(s)}': regex [{string.Join("|", expected.Select(Regex.Escape))}] vs [{string.Join("|", Pieces(s).Select(Regex.Escape))}]");
        }
    }

    [Theory]
    [InlineData("𝟏𝟐𝟑", new[] { "𝟏", "𝟐", "𝟑" })]           // math-bold digits: three \p{N}
    [InlineData(" 𝐁𝐨𝐥𝐝 text", new[] { " 𝐁𝐨𝐥𝐝", " text" })] // math-bold letters are \p{L}
    [InlineData("𠮷野家", new[] { "𠮷野家" })]                  // a supplementary ideograph joins its neighbours
    [InlineData("a 😀😀\n", new[] { "a", " 😀😀\n" })]          // emoji are neither letters nor digits
    [InlineData("I'M he'Ll", new[] { "I", "'M", " he", "'Ll" })]
    [InlineData("x  \n\n  y", new[] { "x", "  \n\n", " ", " y" })]
    [InlineData("end   ", new[] { "end", "   " })]
    public void Splits_supplementary_plane_and_edge_cases(string text, string[] expected) =>
        Assert.Equal(expected, Pieces(text));

    [Theory]
    [InlineData("e\u0301", "\u00E9")]                       // composes
    [InlineData("\u1100\u1161\u11A8", "\uAC01")]            // Hangul L V T
    [InlineData("a\u0328\u0301", "\u0105\u0301")]           // ogonek (ccc 202) first, acute (230) stays
    [InlineData("a\u0301\u0328", "\u0105\u0301")]           // canonical reordering, then composition
    [InlineData("\u0958", "\u0915\u093C")]                  // composition exclusion stays decomposed
    [InlineData("\u212B", "\u00C5")]                        // singleton (Angstrom sign) -> A ring
    [InlineData("\u003E\u0338", "\u226F")]                  // '>' + combining long solidus
    [InlineData("\U0001D400 plain", "\U0001D400 plain")]    // math bold is NFC-stable (only NFKC folds it)
    [InlineData("ﬁ ①", "ﬁ ①")]                              // compatibility characters are left alone
    public void Nfc_matches_unicode(string input, string expected) =>
        Assert.Equal(expected, UnicodeNfc.Normalize(input));
}
