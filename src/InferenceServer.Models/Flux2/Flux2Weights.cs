using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2;

/// <summary>What a load found: keys the module wanted but the source lacked, keys it had but nobody wanted, wrong shapes.</summary>
public sealed record Flux2LoadReport(IReadOnlyList<string> Missing, IReadOnlyList<string> Unexpected, IReadOnlyList<string> ShapeMismatches)
{
    public bool IsClean => Missing.Count == 0 && Unexpected.Count == 0 && ShapeMismatches.Count == 0;
    public override string ToString() =>
        $"missing [{string.Join(", ", Missing)}]; unexpected [{string.Join(", ", Unexpected)}]; shape mismatches [{string.Join(", ", ShapeMismatches)}]";
}

/// <summary>Loads BFL-named tensors into a <see cref="Flux2Transformer"/> (any layout: wrap diffusers sources with <see cref="Flux2Diffusers.AsBfl"/>).</summary>
public static class Flux2Weights
{
    /// <summary>
    /// Copies every parameter from <paramref name="source"/> (converted to the parameter's dtype and device).
    /// With <paramref name="strict"/> any missing, unexpected or mis-shaped key throws <see cref="InvalidDataException"/>.
    /// </summary>
    public static Flux2LoadReport Load(Flux2Transformer model, ITensorSource source, bool strict = true)
    {
        var missing = new List<string>();
        var mismatched = new List<string>();
        var wanted = new HashSet<string>(StringComparer.Ordinal);
        using (no_grad())
            foreach (var (name, p) in model.named_parameters())
            {
                wanted.Add(name);
                if (!source.TryGetEntry(name, out var e)) { missing.Add(name); continue; }
                if (!e.Shape.SequenceEqual(p.shape)) { mismatched.Add($"{name}: checkpoint {e.ShapeText} vs model [{string.Join(", ", p.shape)}]"); continue; }
                using var t = source.Load(name, p.dtype, p.device);
                p.copy_(t);
            }
        var unexpected = source.Entries.Select(e => e.Name).Where(n => !wanted.Contains(n)).ToList();
        var report = new Flux2LoadReport(missing, unexpected, mismatched);
        if (strict && !report.IsClean) throw new InvalidDataException($"FLUX.2 transformer checkpoint does not match the config: {report}");
        return report;
    }
}
