using System.Globalization;

namespace InferenceServer.LoadGen;

/// <summary>What each request asks for: a size drawn from a weighted mix, a prompt from a small pool, fixed steps and n.</summary>
public sealed record Workload(IReadOnlyList<(int Width, int Height, double Weight)> Sizes, int Steps, int Images, int PromptPool, long Seed)
{
    /// <summary>"64x64:3,128x128:1" (weights optional, default 1).</summary>
    public static IReadOnlyList<(int, int, double)> ParseSizes(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(part =>
        {
            var (size, weight) = part.Split(':') is [var s, var w] ? (s, double.Parse(w, CultureInfo.InvariantCulture)) : (part, 1.0);
            var wh = size.ToLowerInvariant().Split('x');
            if (wh.Length != 2 || !int.TryParse(wh[0], out int width) || !int.TryParse(wh[1], out int height) || weight <= 0)
                throw new ArgumentException($"--sizes '{part}': expected WxH or WxH:weight");
            return (width, height, weight);
        }).ToList();

    public (int Width, int Height) PickSize(Random random)
    {
        double total = Sizes.Sum(s => s.Weight), x = random.NextDouble() * total;
        foreach (var s in Sizes)
        {
            if ((x -= s.Weight) < 0) return (s.Width, s.Height);
        }
        return (Sizes[^1].Width, Sizes[^1].Height);
    }

    public string Prompt(int i) => $"load test prompt {i % Math.Max(1, PromptPool)}: a lighthouse on a cliff at dusk";
}
