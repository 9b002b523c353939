using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Flux2;

/// <summary>Single DiT forwards against the BFL reference (every <c>flux2-dit-*</c> case, all numbers from case.json).</summary>
public class Flux2ForwardParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> DitCases => Fixtures.Cases("flux2-dit-");

    [Theory, Trait("Category", "Parity"), MemberData(nameof(DitCases))]
    public void Forward_matches_reference(string caseName)
    {
        using var c = new Flux2Case(caseName);
        using var scope = NewDisposeScope();
        using var model = c.LoadModel();
        bool withRefs = c.Has("x_model_in");
        var x = c.T(withRefs ? "x_model_in" : "x_img");
        var xIds = c.T(withRefs ? "x_ids_model_in" : "img_ids");
        var ctx = c.T("ctx");
        var ctxIds = c.T("ctx_ids");
        var t = c.T("timesteps");
        Tensor? g = c.Has("guidance") ? c.T("guidance") : null;
        var trace = new Dictionary<string, Tensor>();
        var outMain = model.Forward(x, xIds, t, ctx, ctxIds, g, trace);

        int checkedOutputs = 0;
        foreach (var name in c.Section("outputs"))
        {
            Tensor actual = name switch
            {
                "out" or "out_full" => outMain,
                "pred" => outMain[.., ..c.Shape("L_img")],
                "out_guidance_alt" => model.Forward(x, xIds, t, ctx, ctxIds, c.T("guidance_alt")),
                _ => throw new InvalidOperationException($"{caseName}: unknown output '{name}' in case.json"),
            };
            Check(c, name, actual, c.T(name), c.Atol, c.Rtol);
            checkedOutputs++;
        }
        Assert.True(checkedOutputs > 0, $"{caseName}: no outputs checked");

        // dbg.* intermediates: "same atol scaled by magnitude" (case.json), not part of pass/fail upstream, but all must hold here.
        foreach (var name in c.Section("debug_intermediates"))
        {
            string key = name["dbg.".Length..];
            Assert.True(trace.ContainsKey(key), $"{caseName}: no intermediate '{key}' traced");
            var expected = c.T(name);
            double scale = Math.Max(1.0, expected.abs().max().item<float>());
            Check(c, name, trace[key], expected, c.Atol * scale, c.Rtol);
        }
        foreach (var v in trace.Values) v.Dispose();
    }

    void Check(Flux2Case c, string name, Tensor actual, Tensor expected, double atol, double rtol)
    {
        double err = TensorAssert.MaxAbsDiff(actual, expected);
        output.WriteLine($"{c.Name} {name}: max |diff| {err:G3} (atol {atol:G3}, rtol {rtol:G3}{(c.AtolStrict is { } s ? $", atol_strict {s:G3}" : "")})");
        TensorAssert.Close(actual, expected, atol, rtol, $"{c.Name}/{name}");
    }
}
