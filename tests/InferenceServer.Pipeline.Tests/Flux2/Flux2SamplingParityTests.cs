using InferenceServer.Models.Flux2.Autoencoder;
using System.Text.Json;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Flux2;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Flux2;

/// <summary>Schedule, packing and the denoise loops against the BFL reference fixtures.</summary>
public class Flux2SamplingParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> ScheduleCases => Fixtures.Cases("flux2-schedule");
    public static TheoryData<string> PackCases => Fixtures.Cases("flux2-pack");
    public static TheoryData<string> DenoiseCases => Fixtures.Cases("flux2-denoise");

    [Theory, Trait("Category", "Parity"), MemberData(nameof(ScheduleCases))]
    public void Schedule_matches_reference(string caseName)
    {
        using var c = new Flux2Case(caseName);
        var tol = c.Json.GetProperty("tolerance");
        double muAtol = tol.GetProperty("mu_atol").GetDouble(), tAtol = tol.GetProperty("timesteps_atol").GetDouble();
        double rtol = tol.TryGetProperty("rtol", out var r) ? r.GetDouble() : 0;
        using var table = JsonDocument.Parse(File.ReadAllText(Path.Combine(c.Dir, c.Json.GetProperty("table_file").GetString()!)));
        double worstMu = 0, worstT = 0;
        int rows = 0;
        foreach (var row in table.RootElement.EnumerateArray())
        {
            int len = row.GetProperty("image_seq_len").GetInt32(), steps = row.GetProperty("num_steps").GetInt32();
            double mu = FlowSchedule.ComputeEmpiricalMu(len, steps), muRef = row.GetProperty("mu").GetDouble();
            Assert.True(Math.Abs(mu - muRef) <= muAtol + rtol * Math.Abs(muRef), $"mu({len}, {steps}) = {mu:R}, expected {muRef:R}");
            worstMu = Math.Max(worstMu, Math.Abs(mu - muRef));
            var ts = FlowSchedule.GetSchedule(steps, len);
            var expected = row.GetProperty("timesteps").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            Assert.Equal(expected.Length, ts.Length);
            for (int i = 0; i < ts.Length; i++)
            {
                Assert.True(Math.Abs(ts[i] - expected[i]) <= tAtol + rtol * Math.Abs(expected[i]), $"get_schedule({steps}, {len})[{i}] = {ts[i]:R}, expected {expected[i]:R}");
                worstT = Math.Max(worstT, Math.Abs(ts[i] - expected[i]));
            }
            rows++;
        }
        Assert.True(rows > 0);
        output.WriteLine($"{caseName}: {rows} rows; max |mu diff| {worstMu:G3} (atol {muAtol:G3}); max |t diff| {worstT:G3} (atol {tAtol:G3})");
    }

    [Theory, Trait("Category", "Parity"), MemberData(nameof(PackCases))]
    public void Packing_matches_reference(string caseName)
    {
        using var c = new Flux2Case(caseName);
        using var scope = NewDisposeScope();
        var actual = new Dictionary<string, Tensor>();
        if (c.Has("latent"))
        {
            actual["patchified"] = LatentTokens.Patchify(c.T("latent"));
            (actual["tokens"], actual["img_ids"]) = Flux2Packing.BatchedPrcImg(c.T("patchified"));
            actual["unpacked_grid"] = Flux2Packing.Unpack(c.T("tokens"), c.T("img_ids"));
            actual["unpatchified"] = LatentTokens.Unpatchify(c.T("unpacked_grid"));
        }
        if (c.Has("perm"))
        {
            var perm = c.T("perm");
            actual["tokens_shuffled"] = c.T("tokens").index_select(1, perm);
            actual["img_ids_shuffled"] = c.T("img_ids").index_select(1, perm);
            actual["unpacked_grid_from_shuffled"] = Flux2Packing.Unpack(c.T("tokens_shuffled"), c.T("img_ids_shuffled"));
        }
        var refs = c.Section("tensors").Where(n => n.StartsWith("ref_latent_", StringComparison.Ordinal)).OrderBy(n => int.Parse(n["ref_latent_".Length..])).Select(c.T).ToList();
        if (refs.Count > 0)
        {
            string suffix = $"_{refs.Count}";
            (actual["ref_tokens" + suffix], actual["ref_ids" + suffix]) = Flux2Packing.ReferenceTokens(refs);
            actual["ref_scatter_grid" + suffix] = cat(Flux2Packing.ScatterIds(c.T("ref_tokens" + suffix), c.T("ref_ids" + suffix)), 0);
        }
        foreach (var name in c.Section("tensors").Where(n => n.StartsWith("txt_ids_", StringComparison.Ordinal)))
        {
            var shape = c.T(name).shape; // [B, L, 4]
            actual[name] = Flux2Packing.BatchedPrcTxt(zeros(shape[0], shape[1], 5)).Ids;
        }
        if (c.Has("compress_time_in")) actual["compress_time_out"] = Flux2Packing.CompressTime(c.T("compress_time_in"));

        double atol = c.Atol, rtol = c.Rtol;
        foreach (var (name, a) in actual)
        {
            var e = c.T(name);
            Assert.Equal(e.dtype, a.dtype);
            TensorAssert.Close(a, e, atol, rtol, $"{caseName}/{name}");
            output.WriteLine($"{caseName} {name}: max |diff| {TensorAssert.MaxAbsDiff(a, e):G3} (atol {atol}, rtol {rtol})");
        }
        var unchecked_ = c.Section("tensors").Where(n => !actual.ContainsKey(n) && !IsInput(n)).ToList();
        Assert.True(unchecked_.Count == 0, $"{caseName}: outputs not checked: {string.Join(", ", unchecked_)}");
        static bool IsInput(string n) => n is "latent" or "perm" or "compress_time_in" || n.StartsWith("ref_latent_", StringComparison.Ordinal);
    }

    [Theory, Trait("Category", "Parity"), MemberData(nameof(DenoiseCases))]
    public void Denoise_loops_match_reference(string caseName)
    {
        using var c = new Flux2Case(caseName);
        using var scope = NewDisposeScope();
        using var model = c.LoadModel();
        var outputs = c.Section("outputs").ToHashSet();
        double atol = c.Atol, rtol = c.Rtol;
        int lImg = c.Shape("L_img"), steps = c.Shape("num_steps");
        var x0 = c.T("x_init");
        var imgIds = c.T("img_ids");
        // The stored schedule must be get_schedule(num_steps, L_img).
        var ts = FlowSchedule.GetSchedule(steps, lImg);
        Check("timesteps", tensor(ts), c.T("timesteps"), 0, 0); // bit for bit

        foreach (var run in new[] { "t2i", "edit" }.Where(r => outputs.Contains(r + "_final")))
        {
            var latents = new List<Tensor>();
            var velocities = new List<Tensor>();
            bool edit = run == "edit";
            var final = FlowSampler.Denoise(model, x0, imgIds, c.T("ctx"), c.T("ctx_ids"), ts, 1.0f,
                edit ? c.T("ref_tokens") : null, edit ? c.T("ref_ids") : null,
                s => { latents.Add(s.Latents[0].clone().MoveToOuterDisposeScope()); velocities.Add(s.Velocity[0].clone().MoveToOuterDisposeScope()); });
            Assert.Equal(steps, latents.Count);
            Check($"{run}_latents_per_step", stack(latents), c.T($"{run}_latents_per_step"), atol, rtol);
            Check($"{run}_velocity_per_step", stack(velocities), c.T($"{run}_velocity_per_step"), atol, rtol);
            Check($"{run}_final", final, c.T($"{run}_final"), atol, rtol);
            if (outputs.Contains($"{run}_final_latent_grid"))
                Check($"{run}_final_latent_grid", Flux2Packing.Unpack(final, imgIds), c.T($"{run}_final_latent_grid"), atol, rtol);
        }
        if (outputs.Contains("cfg_final"))
        {
            int cfgSteps = c.Shape("cfg_steps");
            var cfgTs = FlowSchedule.GetSchedule(cfgSteps, lImg);
            Check("cfg_timesteps", tensor(cfgTs), c.T("cfg_timesteps"), 0, 0);
            float g = (float)c.Json.GetProperty("cfg_guidance").GetDouble();
            var final = FlowSampler.DenoiseCfg(model, x0, imgIds, c.T("cfg_ctx"), c.T("cfg_ctx_ids"), cfgTs, g, c.T("ref_tokens"), c.T("ref_ids"));
            Check("cfg_final", final, c.T("cfg_final"), atol, rtol);
        }

        void Check(string name, Tensor a, Tensor e, double at, double rt)
        {
            output.WriteLine($"{caseName} {name}: max |diff| {TensorAssert.MaxAbsDiff(a, e):G3} (atol {at:G3}, rtol {rt:G3}{(c.AtolStrict is { } s ? $", atol_strict {s:G3}" : "")})");
            TensorAssert.Close(a, e, at, rt, $"{caseName}/{name}");
        }
    }
}
