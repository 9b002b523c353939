using System.Net;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using Microsoft.Extensions.DependencyInjection;

namespace InferenceServer.Tests.Serving;

/// <summary>What a starting server says about itself: the load's progress per component, then the warm-up, then ready.</summary>
public sealed class ReadinessPhaseTests
{
    [Fact]
    public void The_load_reports_each_component_as_it_reads_and_logs_its_timing()
    {
        var phases = new List<string>();
        var log = new List<string>();
        var options = new ServerOptions { Models = [TinyModel.Folder], ModelName = "tiny", DType = "fp32" };
        var models = ServedModel.LoadAll(options, line => { lock (log) log.Add(line); }, p => { lock (phases) phases.Add(p); });
        try
        {
            Assert.Contains(phases, p => p.StartsWith("loading tiny: transformer ", StringComparison.Ordinal));
            Assert.Contains(phases, p => p.StartsWith("loading tiny: text encoder 100% ", StringComparison.Ordinal));
            Assert.Contains(log, l => l.StartsWith("transformer ", StringComparison.Ordinal) && l.Contains(" GB in ", StringComparison.Ordinal));
            Assert.Contains(log, l => l == "loading tiny: transformer 50%");
        }
        finally
        {
            foreach (var m in models) m.Dispose();
        }
    }

    [Fact]
    public async Task Readyz_answers_503_with_the_phase_until_the_model_is_loaded_and_warm()
    {
        using var gate = new ManualResetEventSlim();
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // The real loader, held at a known phase until the test has seen /readyz say it.
        IReadOnlyList<ServedModel> Gated(ServerOptions o, Action<string> log, Action<string> phase)
        {
            phase("loading tiny: transformer 50% (0.01 of 0.02 GB)");
            held.SetResult();
            gate.Wait(TimeSpan.FromMinutes(2));
            return ServedModel.LoadAll(o, log, phase);
        }
        var app = RunningServer.Build(customize: b => b.Services.AddSingleton(sp => ActivatorUtilities.CreateInstance<ImageScheduler>(sp,
            (Func<ServerOptions, Action<string>, Action<string>, IReadOnlyList<ServedModel>>)Gated)));
        await app.StartAsync();
        try
        {
            var (httpPort, _) = ServerHost.BoundPorts(app);
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{httpPort}/") };
            await held.Task.WaitAsync(TimeSpan.FromMinutes(2));
            var r = await http.GetAsync("readyz");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
            Assert.Equal("not ready: loading tiny: transformer 50% (0.01 of 0.02 GB)", await r.Content.ReadAsStringAsync());
            gate.Set();
            var scheduler = app.Services.GetRequiredService<ImageScheduler>();
            await scheduler.Loaded.WaitAsync(TimeSpan.FromMinutes(2));
            Assert.Equal("ready", scheduler.Phase);
            Assert.Equal("ready", await http.GetStringAsync("readyz"));
        }
        finally
        {
            gate.Set();
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }
}
