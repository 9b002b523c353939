using InferenceServer.Reliability;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Reliability;

/// <summary>
/// The reliability harness (bench/InferenceServer.Reliability) at CI size, against this build's inference-server.dll
/// started as a real process. Run alone: they time requests against a per-request limit, and share two cores badly.
/// </summary>
[Collection(RunAlone.Name)]
public sealed class ReliabilityHarnessTests(ITestOutputHelper output)
{
    static string ServerDll => Path.Combine(AppContext.BaseDirectory, "inference-server.dll");

    static HarnessOptions Harness(string name, string? apiKey = null) => new()
    {
        ServerDll = ServerDll, ApiKey = apiKey, TimeLimit = TimeSpan.FromMinutes(15),
        Out = Directory.CreateTempSubdirectory($"reliability-{name}-").FullName,
    };

    [Fact]
    public async Task Fuzz_of_1000_malformed_requests_gets_no_5xx_no_internal_no_hang_and_the_server_still_serves()
    {
        var result = await FuzzRun.RunAsync(new FuzzRun.Options { Harness = Harness("fuzz", apiKey: "ci-key"), Requests = 1000, Seed = 1 });
        output.WriteLine(File.ReadAllText(Path.Combine(result.Out, "summary.md")));
        Assert.Equal(1000, result.Sent);
        Assert.True(result.Defects == 0, $"{result.Defects} defects (5xx / INTERNAL / UNKNOWN / dropped), replays in {result.Out}/replay");
        Assert.True(result.Hangs == 0, $"{result.Hangs} hangs, replays in {result.Out}/replay");
        Assert.True(result.ExpectationFailures == 0, $"{result.ExpectationFailures} auth cases not refused with 401 / UNAUTHENTICATED");
        Assert.True(result.ServerAlive, "the server exited during the fuzz");
        Assert.True(result.ValidAfterOk, $"a valid request after the fuzz: HTTP {result.ValidAfterHttp}, gRPC {result.ValidAfterGrpc}");
        // RSS is reported, not asserted: it does not come back within 10 % yet (bench/reliability/README.md, "Open defects").
        Directory.Delete(result.Out, recursive: true);   // kept when an assertion failed, for its replays
    }

    /// <summary>Fault cases asserted in CI (the harness's full list runs with <c>bench/reliability/run.sh faults</c>).</summary>
    static readonly string[] MustPass =
    [
        "sigkill-mid-request",
        "serve transformer-truncated", "generate transformer-truncated",
        "serve transformer-header-length-huge", "generate transformer-header-length-huge",
        "serve vae-missing", "generate vae-missing",
        "serve marker-garbage", "generate marker-garbage", "serve marker-wrong-types", "generate marker-wrong-types",
        "serve vocab-zero-bytes", "generate vocab-zero-bytes", "serve merges-garbage", "generate merges-garbage",
        "serve transformer-nan-weights", "generate transformer-nan-weights",
        "multipart-uploads-on-full-tmp", "generate-out-on-full-fs",
        "random-checkpoint-killed-at-5 %", "random-checkpoint-killed-at-40 %", "random-checkpoint-killed-at-80 %",
    ];

    [Fact]
    public async Task Faults_kill_corrupt_model_full_disk_and_killed_cli_writes_are_handled()
    {
        string[] selection = ["kill", "disk", "cli", "transformer-truncated", "transformer-header-length-huge", "vae-missing", "marker-garbage",
            "marker-wrong-types", "vocab-zero-bytes", "merges-garbage", "transformer-nan-weights"];
        var result = await FaultsRun.RunAsync(Harness("faults"), selection);
        output.WriteLine(File.ReadAllText(Path.Combine(result.Out, "summary.md")));
        foreach (string name in MustPass)
        {
            var c = Assert.Single(result.Cases, c => c.Name == name);
            // A machine without tmpfs reports the disk cases as skipped; that is not a failure of the server.
            if (c.Status == "skipped" && c.Group == "disk") continue;
            Assert.True(c.Status == "pass", $"{c.Group}/{c.Name}: {c.Status}: {c.Observed}");
        }
        Directory.Delete(result.Out, recursive: true);
    }
}
