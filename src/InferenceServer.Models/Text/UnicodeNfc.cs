using System.Text;

namespace InferenceServer.Models.Text;

/// <summary>
/// Unicode Normalization Form C in managed code. The project runs with <c>InvariantGlobalization</c>, where
/// <see cref="string.Normalize(NormalizationForm)"/> returns its input unchanged, so the tokenizer's NFC normaliser
/// needs its own: canonical decomposition, canonical ordering, canonical composition (UAX #15), with the tables in
/// the embedded <c>nfc.data</c> (generated from the Unicode Character Database by <c>make_nfc_data.py</c>).
/// </summary>
internal static class UnicodeNfc
{
    static readonly Lazy<Tables> data = new(Tables.Load);

    const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7, LCount = 19, VCount = 21, TCount = 28;
    const int NCount = VCount * TCount, SCount = LCount * NCount;

    /// <summary>The NFC form of <paramref name="text"/> (which must be well-formed UTF-16).</summary>
    public static string Normalize(string text)
    {
        // Below U+0300 every character is NFC-stable and none composes with what precedes it.
        if (!text.AsSpan().ContainsAnyExceptInRange('\0', '\u02FF')) return text;
        var t = data.Value;
        var cps = new List<int>(text.Length);
        foreach (var rune in text.EnumerateRunes()) Decompose(t, rune.Value, cps);

        // Canonical ordering: stable sort of each run of non-starters by combining class.
        for (int i = 1; i < cps.Count; i++)
        {
            int c = t.Ccc(cps[i]);
            if (c == 0) continue;
            for (int j = i; j > 0 && t.Ccc(cps[j - 1]) > c; j--) (cps[j - 1], cps[j]) = (cps[j], cps[j - 1]);
        }

        // Canonical composition: a character joins the last starter unless something in between blocks it.
        var result = new List<int>(cps.Count);
        int starter = -1, lastCcc = 0;
        foreach (int cp in cps)
        {
            int ccc = t.Ccc(cp);
            bool adjacent = starter == result.Count - 1;
            if (starter >= 0 && (adjacent || (lastCcc != 0 && lastCcc < ccc)) && TryCompose(t, result[starter], cp, out int composed))
            {
                result[starter] = composed;
                continue;
            }
            if (ccc == 0) starter = result.Count;
            lastCcc = ccc;
            result.Add(cp);
        }
        var sb = new StringBuilder(text.Length);
        foreach (int cp in result) sb.Append(new Rune(cp).ToString());
        return sb.ToString();
    }

    static void Decompose(Tables t, int cp, List<int> output)
    {
        if (cp >= SBase && cp < SBase + SCount)
        {
            int s = cp - SBase;
            output.Add(LBase + s / NCount);
            output.Add(VBase + s % NCount / TCount);
            if (s % TCount != 0) output.Add(TBase + s % TCount);
            return;
        }
        if (t.Decompositions.TryGetValue(cp, out var parts))
            foreach (int p in parts) Decompose(t, p, output);
        else
            output.Add(cp);
    }

    static bool TryCompose(Tables t, int a, int b, out int composed)
    {
        if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
        {
            composed = SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
            return true;
        }
        if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
        {
            composed = a + (b - TBase);
            return true;
        }
        return t.Compositions.TryGetValue(((long)a << 21) | (uint)b, out composed);
    }

    sealed class Tables
    {
        public readonly Dictionary<int, int[]> Decompositions = [];
        public readonly Dictionary<long, int> Compositions = [];
        readonly Dictionary<int, byte> ccc = [];

        public int Ccc(int cp) => cp < 0x300 ? 0 : ccc.GetValueOrDefault(cp);

        public static Tables Load()
        {
            var t = new Tables();
            using var stream = typeof(UnicodeNfc).Assembly.GetManifestResourceStream("InferenceServer.Models.Text.nfc.data")
                ?? throw new InvalidOperationException("embedded resource nfc.data is missing");
            using var reader = new StreamReader(stream);
            while (reader.ReadLine() is { } line)
            {
                if (line.Length == 0 || line[0] == '#') continue;
                var f = line.Split(' ');
                int[] n = f.Skip(1).Select(x => Convert.ToInt32(x, 16)).ToArray();
                switch (f[0])
                {
                    case "c": for (int cp = n[0]; cp <= n[1]; cp++) t.ccc[cp] = (byte)n[2]; break;
                    case "d": t.Decompositions[n[0]] = n[1..]; break;
                    case "p": t.Compositions[((long)n[1] << 21) | (uint)n[2]] = n[0]; break;
                    default: throw new InvalidDataException($"nfc.data: bad line '{line}'");
                }
            }
            return t;
        }
    }
}
