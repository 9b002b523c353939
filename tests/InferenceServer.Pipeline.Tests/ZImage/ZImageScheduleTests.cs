using System.Text.Json;
using InferenceServer.Pipeline.ZImage;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;

namespace InferenceServer.Pipeline.Tests.ZImage;

/// <summary>
/// <see cref="ZImageSchedule"/> against every zimage-schedule* case: each (steps, shift) row of schedule.json, the
/// float32 <c>sigmas</c>, <c>timesteps</c> and <c>t_model</c> bit for bit (the official float64 path is followed exactly).
/// </summary>
public class ZImageScheduleTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => Fixtures.Cases("zimage-schedule");

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Every_row_is_bit_exact(string name)
    {
        string dir = Fixtures.CaseDir(name);
        using var caseJson = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json")));
        string table = caseJson.RootElement.GetProperty("table_file").GetString()!;
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, table)));
        int rows = 0;
        foreach (var row in doc.RootElement.EnumerateArray())
        {
            int steps = row.GetProperty("num_inference_steps").GetInt32();
            double shift = row.GetProperty("shift").GetDouble();
            string what = $"{name} steps {steps} shift {shift}";
            float[] Floats(string key) => [.. row.GetProperty(key).EnumerateArray().Select(e => (float)e.GetDouble())];

            var sigmas = ZImageSchedule.Sigmas(steps, shift);
            Assert.Equal(steps + 1, sigmas.Length);
            AssertBits(Floats("sigmas"), sigmas, what + " sigmas");
            AssertBits(Floats("timesteps"), sigmas[..^1].Select(ZImageSchedule.Timestep).ToArray(), what + " timesteps");
            AssertBits(Floats("t_model"), sigmas[..^1].Select(ZImageSchedule.ModelTime).ToArray(), what + " t_model");
            rows++;
        }
        output.WriteLine($"{name}: {rows} rows bit-exact");
        Assert.True(rows > 0);
    }

    [Fact]
    public void Turbo_schedule_is_the_documented_one()
    {
        // REFERENCE-NOTES: Turbo, shift 3, 8 steps -> 1, .9545, .9, .8333, .75, .6429, .5, .3, 0.
        double[] expected = [1, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0];
        var sigmas = ZImageSchedule.Sigmas(8, ZImageSchedule.TurboShift);
        Assert.Equal(expected.Length, sigmas.Length);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], sigmas[i], 4);
        Assert.Equal(0f, ZImageSchedule.ModelTime(1f));
    }

    [Fact]
    public void Bad_arguments_are_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ZImageSchedule.Sigmas(0, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => ZImageSchedule.Sigmas(8, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => ZImageSchedule.Sigmas(8, double.NaN));
    }

    static void AssertBits(float[] expected, float[] actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{what}[{i}]: {actual[i]:R} != {expected[i]:R}");
    }
}
