using InferenceServer.Models.ZImage;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.ZImage;

/// <summary>DiT forwards against the official reference: every <c>zimage-dit-*</c> case, all numbers from its case.json.</summary>
public class ZImageForwardParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> DitCases => Fixtures.Cases("zimage-dit-");

    /// <summary>Runs the loaded model on the case's inputs the way the pipeline does (patchify, forward, unpatchify).</summary>
    static Tensor Run(ZImageTransformer model, Tensor latents, Tensor t, IReadOnlyList<Tensor> captions, IDictionary<string, Tensor>? trace = null)
    {
        long gh = latents.shape[2] / 2, gw = latents.shape[3] / 2;
        using var x = ZImagePatches.Patchify(latents);
        using var y = model.Forward(x, gh, gw, t, captions, trace);
        return ZImagePatches.Unpatchify(y.to(ScalarType.Float32), gh, gw); // [B, 16, H, W]
    }

    [Theory, Trait("Category", "Parity"), MemberData(nameof(DitCases))]
    public void Forward_matches_reference(string caseName)
    {
        using var c = new ZImageCase(caseName);
        using var scope = NewDisposeScope();
        using var model = c.LoadModel();
        var latents = c.T("latents");
        var t = c.T("t");
        var captions = c.Captions();
        var trace = new Dictionary<string, Tensor>();
        var outAll = Run(model, latents, t, captions, trace);

        int checkedOutputs = 0;
        foreach (var name in c.Section("outputs"))
        {
            int b = int.Parse(name[(name.LastIndexOf('.') + 1)..]);
            Tensor actual = name.StartsWith("out_single.", StringComparison.Ordinal)
                ? Run(model, latents[b..(b + 1)], t[b..(b + 1)], [captions[b]])[0].unsqueeze(1) // the sample alone
                : name.StartsWith("out.", StringComparison.Ordinal) ? outAll[b].unsqueeze(1)
                : throw new InvalidOperationException($"{caseName}: unknown output '{name}' in case.json");
            Check(c, name, actual, c.T(name), c.Atol, c.Rtol);
            checkedOutputs++;
        }
        Assert.True(checkedOutputs >= c.Batch, $"{caseName}: only {checkedOutputs} outputs checked");

        // dbg.*: "same atol scaled by magnitude" (case.json); each must be traced and hold.
        int dbg = 0;
        foreach (var name in c.Section("debug_intermediates"))
        {
            string key = name["dbg.".Length..];
            Assert.True(trace.ContainsKey(key), $"{caseName}: no intermediate '{key}' traced");
            var expected = c.T(name);
            double scale = Math.Max(1.0, expected.abs().max().to(ScalarType.Float64).item<double>());
            Check(c, name, trace[key], expected, c.Atol * scale, c.Rtol);
            dbg++;
        }
        output.WriteLine($"{caseName}: {checkedOutputs} outputs, {dbg} intermediates checked");
        foreach (var v in trace.Values) v.Dispose();
    }

    [Theory, Trait("Category", "Parity"), MemberData(nameof(DitCases))]
    public void Bf16_forward_stays_within_the_documented_bound(string caseName)
    {
        // BF16 weights and activations (8-bit mantissa) through 7 blocks: measured max |diff| ~0.05 and relative RMS error ~1%
        // against the float32 reference (outputs of RMS ~1). The bound (relative RMS 5%, max 0.5) catches structural bugs (O(1)).
        using var c = new ZImageCase(caseName);
        using var scope = NewDisposeScope();
        using var model = c.LoadModel(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, model.DType);
        var outAll = Run(model, c.T("latents"), c.T("t"), c.Captions());
        for (int b = 0; b < c.Batch; b++)
        {
            var expected = c.T($"out.{b}").squeeze(1).to(ScalarType.Float64);
            var diff = outAll[b].to(ScalarType.Float64) - expected;
            double max = diff.abs().max().item<double>();
            double rel = (diff.square().mean().sqrt() / expected.square().mean().sqrt()).item<double>();
            output.WriteLine($"{caseName} out.{b} bf16: max |diff| {max:G3}, relative RMS error {rel:G3}");
            Assert.True(rel < 0.05 && max < 0.5, $"{caseName} out.{b} bf16: max |diff| {max:G3}, relative RMS error {rel:G3}");
        }
    }

    void Check(ZImageCase c, string name, Tensor actual, Tensor expected, double atol, double rtol)
    {
        double err = TensorAssert.MaxAbsDiff(actual, expected);
        output.WriteLine($"{c.Name} {name}: max |diff| {err:G3} (atol {atol:G3}, rtol {rtol:G3}, atol_strict {c.AtolStrict:G3})");
        TensorAssert.Close(actual, expected, atol, rtol, $"{c.Name}/{name}");
    }
}
