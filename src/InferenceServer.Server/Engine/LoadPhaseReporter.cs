using System.Globalization;
using InferenceServer.Models.Weights;

namespace InferenceServer.Server.Engine;

/// <summary>
/// A model load as the server reports it: the phase text /readyz and the health check show while it runs
/// ("loading klein: transformer 45% (3.49 of 7.75 GB)"), and a log line at each quarter of each component, so a
/// minute-long cold load is visibly moving. Called from the reading threads.
/// </summary>
internal sealed class LoadPhaseReporter(string model, Action<string> setPhase, Action<string> log)
{
    readonly Dictionary<string, int> quarters = new(StringComparer.Ordinal);

    public void Report(LoadProgress p)
    {
        setPhase(string.Create(CultureInfo.InvariantCulture,
            $"loading {model}: {p.Component} {p.Fraction * 100:F0}% ({p.BytesDone / 1e9:F2} of {p.BytesTotal / 1e9:F2} GB)"));
        int quarter = (int)(p.Fraction * 4);
        lock (quarters)
        {
            if (quarters.TryGetValue(p.Component, out int last) && last >= quarter) return;
            quarters[p.Component] = quarter;
        }
        if (quarter is > 0 and < 4) log($"loading {model}: {p.Component} {quarter * 25}%"); // the end is the component's own report line
    }
}
