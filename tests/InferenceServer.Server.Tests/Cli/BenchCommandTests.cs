using System.Text.Json.Nodes;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Server.Cli;

namespace InferenceServer.Tests.Cli;

/// <summary><c>bench</c> on a tiny random model folder written by <c>random-checkpoint</c>: the JSON holds every stage with sane numbers.</summary>
[Collection(SpectreConsole.Name)]
public sealed class BenchCommandTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("bench-cli-").FullName;
    string Model => Path.Combine(dir, "model");

    public BenchCommandTests()
    {
        Assert.Equal(0, Invoke("random-checkpoint", "--preset", "tiny", "--layout", "bfl", "--out", Model, "--dtype", "fp32", "--seed", "3").Rc);
    }

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static (int Rc, string Err) Invoke(params string[] args) => Cli.Invoke(args);

    [Fact]
    public void Bench_writes_every_stage_with_sane_numbers()
    {
        string json = Path.Combine(dir, "out", "bench.json");
        var (rc, err) = Invoke("bench", "--model", Model, "--size", "64x80", "--steps", "2", "--batch", "2", "--runs", "2", "--warmup", "1",
            "--dtype", "fp32", "--device", "cpu", "--peak-size", "128", "--json", json);
        Assert.True(rc == 0, err);
        var root = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal("flux2-tiny", root["model_card"]!.GetValue<string>());
        Assert.Equal(2, root["runs"]!.GetValue<int>());
        Assert.Equal(2, root["batch"]!.GetValue<int>());
        Assert.Equal(2, root["steps"]!.GetValue<int>());
        Assert.Equal("64x80", root["size"]!.GetValue<string>());
        Assert.Equal(4 * 5, root["image_tokens"]!.GetValue<long>());

        var stages = root["stages"]!.AsArray().ToDictionary(s => s!["stage"]!.GetValue<string>(), s => s!);
        // Every stage the pipeline reports (names as GenerationPipeline writes them; a batched pipeline may name per-image
        // stages differently, so the per-image ones are matched by prefix), plus the summaries.
        foreach (var name in new[] { "reference_decode", "text_encode", "reference_encode", "denoise", "dit_step", "total", "wall" })
            Assert.True(stages.ContainsKey(name), $"stage {name} missing: {string.Join(", ", stages.Keys)}");
        var perStep = stages.Keys.Where(k => k.StartsWith("denoise", StringComparison.Ordinal) && k.Contains("step", StringComparison.Ordinal)).ToList();
        Assert.True(perStep.Count >= 2, $"one stage per step expected: {string.Join(", ", stages.Keys)}");
        Assert.Contains(stages.Keys, k => k.StartsWith("decode", StringComparison.Ordinal));
        Assert.Contains(stages.Keys, k => k.StartsWith("image_encode", StringComparison.Ordinal));
        foreach (var (name, s) in stages)
        {
            double mean = s["mean_ms"]!.GetValue<double>(), p50 = s["p50_ms"]!.GetValue<double>(), min = s["min_ms"]!.GetValue<double>(), max = s["max_ms"]!.GetValue<double>();
            Assert.True(min >= 0 && min <= p50 && p50 <= max && min <= mean && mean <= max && double.IsFinite(max), $"{name}: mean {mean} p50 {p50} min {min} max {max}");
        }
        Assert.Equal(2, stages["wall"]["count"]!.GetValue<int>());
        Assert.Contains(stages["dit_step"]["count"]!.GetValue<int>(), new[] { 2 * 2 * 2, 2 * 2 }); // runs x images x steps (one image at a time) or runs x steps (batched)
        // The stages add up to the run: the sum of the stage timings is within the measured wall time.
        Assert.True(stages["total"]["mean_ms"]!.GetValue<double>() <= stages["wall"]["mean_ms"]!.GetValue<double>() * 1.05);
        Assert.True(stages["denoise"]["mean_ms"]!.GetValue<double>() > 0);

        var dit = root["dit"]!;
        var cfg = ModelCards.Load("flux2-tiny").Transformer;
        long textTokens = root["text_tokens"]!.GetValue<long>();
        Assert.Equal(Flux2Flops.Step(cfg, 20, textTokens), dit["flop_per_step_per_image"]!.GetValue<double>(), 6);
        Assert.Equal(Flux2Flops.Step(cfg, 20, textTokens) * 2 * 2, dit["flop_per_run"]!.GetValue<double>(), 6);
        Assert.Contains("4*L^2*h", dit["formula"]!.GetValue<string>());
        foreach (var key in new[] { "tflops_mean", "tflops_best", "peak_tflops" })
        {
            double v = dit[key]!.GetValue<double>();
            Assert.True(v > 0 && double.IsFinite(v), $"{key} = {v}");
        }
        Assert.Equal(2, root["run_timings"]!.AsArray().Count);
    }

    [Fact]
    public void Flop_formula_matches_the_reference_figure_for_klein_4b_at_2048()
    {
        // REFERENCE.md: one 2048x2048 klein-4B image (16,384 image + 512 text tokens), 4 steps "roughly 9e14" FLOP: that
        // rounds the weights to 4e9; the transformer holds ~3.9e9, of which ~3.1e9 are the per-token block linears, so the
        // exact count is ~7.7e14 (attention alone 3.5e14).
        var c = ModelCards.Load("flux2-klein-4b").Transformer;
        double fourSteps = 4 * Flux2Flops.Step(c, 16384, 512);
        Assert.InRange(fourSteps, 7.0e14, 9.5e14);
        // Linears: 2 x weights x the tokens each weight is applied to, counted independently from the parameter list.
        const long li = 16384, lt = 512;
        double viaSpecs = 2 * Flux2Specs.Parameters(c).Where(p => p.Shape.Length == 2).Sum(p => (double)p.ElementCount * p.Name switch
        {
            var n when n.StartsWith("double_blocks.", StringComparison.Ordinal) && n.Contains(".img_", StringComparison.Ordinal) => li,
            var n when n.StartsWith("double_blocks.", StringComparison.Ordinal) && n.Contains(".txt_", StringComparison.Ordinal) => lt,
            var n when n.StartsWith("single_blocks.", StringComparison.Ordinal) => li + lt,
            var n when n.StartsWith("img_in.", StringComparison.Ordinal) || n.StartsWith("final_layer.linear.", StringComparison.Ordinal) => li,
            var n when n.StartsWith("txt_in.", StringComparison.Ordinal) => lt,
            _ => 1, // per-sample projections: time embedding, modulations, final adaLN
        });
        Assert.Equal(viaSpecs, Flux2Flops.Linear(c, li, lt), viaSpecs * 1e-12);
        Assert.Equal(4.0 * (li + lt) * (li + lt) * c.HiddenSize * (c.Depth + c.DepthSingleBlocks), Flux2Flops.Attention(c, li, lt));
    }

    [Theory]
    [InlineData("fp8", "fp8 weights")]
    [InlineData("int8", "int8")]
    public void Eight_bit_dtypes_load_quantized_weights_and_say_so_in_the_json(string dtype, string format)
    {
        string json = Path.Combine(Path.GetTempPath(), $"bench-{dtype}-{Guid.NewGuid():N}.json");
        var (rc, err) = Invoke("bench", "--model", Model, "--dtype", dtype, "--runs", "1", "--warmup", "0", "--size", "64x64", "--device", "cpu", "--json", json);
        Assert.True(rc == 0, err);
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
        Assert.Contains(format, doc.RootElement.GetProperty("weights").GetString(), StringComparison.OrdinalIgnoreCase);
        File.Delete(json);
    }
}
