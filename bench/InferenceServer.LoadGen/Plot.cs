using System.Globalization;
using System.Text;

namespace InferenceServer.LoadGen;

/// <summary>
/// Latency-vs-load charts: for each series (a label), p50/p95/p99 latency against offered load (concurrency or rate), and
/// achieved throughput against the same axis. Drawn as SVG and rasterised to PNG by libvips (NetVips), so no plotting stack
/// is needed on the machine.
/// </summary>
public static class Plot
{
    const int W = 960, H = 420, Left = 70, Right = 20, Top = 40, Bottom = 50;
    static readonly string[] Colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

    public static string Svg(IReadOnlyList<RunResult> runs)
    {
        var series = runs.Where(r => r.Mode != "in-process").GroupBy(r => r.Label).ToList();
        bool byRate = runs.Any(r => r.Rate is not null);
        double Load(RunResult r) => byRate ? r.Rate ?? 0 : r.Concurrency ?? 0;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{2 * H}' font-family='sans-serif' font-size='12'>");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width='{W}' height='{2 * H}' fill='white'/>");
        string xLabel = byRate ? "offered load (requests/s, Poisson)" : "concurrency (closed loop)";
        double xMax = Math.Max(1, runs.Select(Load).DefaultIfEmpty(1).Max());
        double latMax = Math.Max(1, runs.Select(r => r.Latency.P99).DefaultIfEmpty(1).Max());
        double tputMax = Math.Max(0.1, runs.Select(r => r.Throughput).DefaultIfEmpty(1).Max());
        Panel(svg, 0, "latency (ms): p50 solid, p95 dashed, p99 dotted", xLabel, xMax, latMax, series.Select((g, k) =>
            (g.Key, Colors[k % Colors.Length], new[]
            {
                (g.OrderBy(Load).Select(r => (Load(r), r.Latency.P50)).ToList(), ""),
                (g.OrderBy(Load).Select(r => (Load(r), r.Latency.P95)).ToList(), "6,4"),
                (g.OrderBy(Load).Select(r => (Load(r), r.Latency.P99)).ToList(), "2,3"),
            })).ToList(), runs.Where(r => r.Mode == "in-process").Select(r => r.Latency.P50).ToList());
        Panel(svg, H, "throughput (requests/s)", xLabel, xMax, tputMax, series.Select((g, k) =>
            (g.Key, Colors[k % Colors.Length], new[] { (g.OrderBy(Load).Select(r => (Load(r), r.Throughput)).ToList(), "") })).ToList(),
            runs.Where(r => r.Mode == "in-process").Select(r => r.Throughput).ToList());
        svg.Append("</svg>");
        return svg.ToString();
    }

    static void Panel(StringBuilder svg, int y0, string title, string xLabel, double xMax, double yMax,
        List<(string Label, string Color, (List<(double X, double Y)> Points, string Dash)[] Lines)> series, List<double> baselines)
    {
        double pw = W - Left - Right, ph = H - Top - Bottom;
        string X(double x) => (Left + x / xMax * pw).ToString("F1", CultureInfo.InvariantCulture);
        string Y(double y) => (y0 + Top + ph - y / yMax * ph).ToString("F1", CultureInfo.InvariantCulture);
        svg.Append(CultureInfo.InvariantCulture, $"<text x='{Left}' y='{y0 + 24}' font-size='14' font-weight='bold'>{Escape(title)}</text>");
        svg.Append(CultureInfo.InvariantCulture, $"<line x1='{Left}' y1='{Y(0)}' x2='{W - Right}' y2='{Y(0)}' stroke='black'/><line x1='{Left}' y1='{Y(0)}' x2='{Left}' y2='{Y(yMax)}' stroke='black'/>");
        for (int t = 0; t <= 5; t++)
        {
            double yv = yMax * t / 5, xv = xMax * t / 5;
            svg.Append(CultureInfo.InvariantCulture, $"<line x1='{Left}' y1='{Y(yv)}' x2='{W - Right}' y2='{Y(yv)}' stroke='#ddd'/>");
            svg.Append(CultureInfo.InvariantCulture, $"<text x='{Left - 6}' y='{Y(yv)}' text-anchor='end' dominant-baseline='middle'>{yv:G4}</text>");
            svg.Append(CultureInfo.InvariantCulture, $"<text x='{X(xv)}' y='{y0 + Top + ph + 16}' text-anchor='middle'>{xv:G4}</text>");
        }
        svg.Append(CultureInfo.InvariantCulture, $"<text x='{Left + pw / 2}' y='{y0 + H - 12}' text-anchor='middle'>{Escape(xLabel)}</text>");
        foreach (var b in baselines)
            svg.Append(CultureInfo.InvariantCulture, $"<line x1='{Left}' y1='{Y(b)}' x2='{W - Right}' y2='{Y(b)}' stroke='#888' stroke-dasharray='1,4'/><text x='{W - Right - 4}' y='{Y(b)}' text-anchor='end' dy='-3' fill='#555'>in-process {b:G4}</text>");
        int legend = 0;
        foreach (var (label, color, lines) in series)
        {
            foreach (var (points, dash) in lines)
            {
                if (points.Count == 0) continue;
                string pts = string.Join(" ", points.Select(p => $"{X(p.X)},{Y(p.Y)}"));
                svg.Append(CultureInfo.InvariantCulture, $"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='2' stroke-dasharray='{(dash == "" ? "none" : dash)}'/>");
                foreach (var p in points) svg.Append(CultureInfo.InvariantCulture, $"<circle cx='{X(p.X)}' cy='{Y(p.Y)}' r='3' fill='{color}'/>");
            }
            svg.Append(CultureInfo.InvariantCulture, $"<text x='{W - Right - 200}' y='{y0 + 24 + 16 * legend++}' fill='{color}'>{Escape(label)}</text>");
        }
    }

    static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("'", "&apos;");

    public static void Png(IReadOnlyList<RunResult> runs, string path)
    {
        using var image = NetVips.Image.NewFromBuffer(Encoding.UTF8.GetBytes(Svg(runs)));
        image.WriteToFile(path);
    }
}
