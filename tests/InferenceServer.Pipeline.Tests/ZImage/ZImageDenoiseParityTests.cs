using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.ZImage;
using InferenceServer.Tests.Shared;
using InferenceServer.Tests.ZImage;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.ZImageSampling;

/// <summary>
/// Every run of every <c>zimage-denoise*</c> case (official <c>pipeline.generate</c> end to end, from the noise to the final
/// latents) through the serving loop: <see cref="SamplingLoop"/> driving the <see cref="ZImageDenoiser"/> the pipeline
/// builds, with the schedule of <see cref="ZImageSchedule"/>. Per-step latents, the final latents and the CFG-applied
/// pattern are compared.
/// </summary>
public class ZImageDenoiseParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => Fixtures.Cases("zimage-denoise");

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Every_run_matches_the_official_loop(string caseName)
    {
        using var c = new ZImageCase(caseName);
        using var model = c.LoadModel();
        int ran = 0;
        foreach (var run in c.Json.GetProperty("runs").EnumerateArray())
        {
            using var scope = NewDisposeScope();
            string name = run.GetProperty("name").GetString()!;
            int steps = run.GetProperty("steps").GetInt32();
            double shift = run.GetProperty("shift").GetDouble(), guidance = run.GetProperty("guidance").GetDouble();
            double cfgNorm = run.TryGetProperty("cfg_normalization", out var cn) && cn.ValueKind == System.Text.Json.JsonValueKind.True ? 1.0 : 0.0;
            double cfgTrunc = run.TryGetProperty("cfg_truncation", out var ct) ? ct.GetDouble() : 1.0;
            var noise = c.T($"{name}_noise");                                                       // [1, 16, 2h, 2w]
            long h = noise.shape[2] / 2, w = noise.shape[3] / 2;
            var caption = c.T($"cap_feats.{run.GetProperty("prompt").GetString()}");
            var negative = guidance > 1 ? c.T("cap_feats.empty") : null;

            var sigmas = ZImageSchedule.Sigmas(steps, shift);
            TensorAssert.Close(tensor(sigmas), c.T($"{name}_sigmas"), 1e-6, 0, $"{caseName}/{name}_sigmas");
            using var denoiser = new ZImageDenoiser(model, [caption], negative, guidance, cfgNorm, cfgTrunc, h, w);
            if (c.Has($"{name}_cfg_applied"))
                Assert.Equal(c.T($"{name}_cfg_applied").data<long>().ToArray(), sigmas[..^1].Select(s => denoiser.AppliesCfg(s) ? 1L : 0L).ToArray());

            var expected = c.T($"{name}_latents");                                                  // [steps + 1, 16, 2h, 2w]
            double worst = 0;
            var final = SamplingLoop.Run(denoiser, ZImagePatches.Patchify(noise), sigmas, onStep: s =>
            {
                var grid = ZImagePatches.Unpatchify(s.Latents, h, w)[0];
                TensorAssert.Close(grid, expected[s.Index + 1], c.Atol, c.Rtol, $"{caseName}/{name}_latents[{s.Index + 1}]");
                worst = Math.Max(worst, TensorAssert.MaxAbsDiff(grid, expected[s.Index + 1]));
            });
            TensorAssert.Close(ZImagePatches.Unpatchify(final, h, w), c.T($"{name}_final"), c.Atol, c.Rtol, $"{caseName}/{name}_final");
            output.WriteLine($"{caseName}/{name}: {steps} steps, shift {shift}, guidance {guidance}: worst per-step |diff| {worst:G3}");
            ran++;
        }
        Assert.True(ran >= 1, $"{caseName}: no run");
    }
}
