using JobEvent = InferenceServer.Server.Engine.JobEvent;
using JobResult = InferenceServer.Server.Engine.JobResult;
using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Server.Engine;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Lora;

/// <summary>
/// The loaded-adapter cache under a small byte budget, observed through ListLoras and /metrics: the least recently used
/// adapter nobody holds goes first, and an adapter a queued or running request holds is neither evicted nor loaded twice.
/// </summary>
public sealed class LoraCacheTests
{
    static GenerateRequest Request(string lora, string id = "") =>
        new() { Prompt = "a lighthouse", Width = 64, Height = 64, Steps = 2, Seed = 3, RequestId = id, Loras = { new LoraRef { Name = lora } } };

    static async Task<(double Loads, double Evictions, double Bytes)> Metrics(RunningServer server)
    {
        using var http = NewHttp(server);
        string text = await http.GetStringAsync("metrics");
        return (TestLoras.Metric(text, "inference_lora_loads_total{result=\"ok\"}"), TestLoras.Metric(text, "inference_lora_evictions_total"),
            TestLoras.Metric(text, "inference_lora_loaded_bytes"));
    }

    static async Task<string[]> Loaded(InferenceClient client) =>
        (await client.ListLorasAsync()).Loras.Where(l => l.Loaded.Count > 0).Select(l => l.Name).ToArray();

    [Fact]
    public async Task The_least_recently_used_adapter_is_evicted_when_the_budget_is_full()
    {
        long one = TestLoras.LoadedBytes("style");
        Assert.Equal(one, TestLoras.LoadedBytes("other"));          // three adapters of one size: the budget holds two
        Assert.Equal(one, TestLoras.LoadedBytes("style-kohya"));
        await using var server = await RunningServer.StartAsync(o => { o.Lora.Directory = TestLoras.Dir; o.Lora.CacheBytes = 2 * one; });
        using var client = new InferenceClient(server.GrpcAddress);

        await client.GenerateAsync(Request("style"));
        await client.GenerateAsync(Request("other"));
        Assert.Equal(["other", "style"], await Loaded(client));
        await client.GenerateAsync(Request("style"));                // style is now the most recently used
        Assert.Equal((2.0, 0.0, 2.0 * one), await Metrics(server));  // a cached adapter is not loaded again

        await client.GenerateAsync(Request("style-kohya"));
        Assert.Equal(["style", "style-kohya"], await Loaded(client));
        Assert.Equal((3.0, 1.0, 2.0 * one), await Metrics(server));
        var listing = await client.ListLorasAsync();
        Assert.Equal((ulong)(2 * one), listing.LoadedBytes);
        Assert.Equal((ulong)(2 * one), listing.CacheBudgetBytes);

        await client.GenerateAsync(Request("other"));                // evicted adapters load again when asked for
        Assert.Equal(["other", "style-kohya"], await Loaded(client));
        Assert.Equal((4.0, 2.0, 2.0 * one), await Metrics(server));
    }

    [Fact]
    public async Task An_adapter_held_by_a_running_request_is_shared_and_evicted_only_when_the_last_holder_ends()
    {
        // A budget of one byte: nothing stays once released. Request "held-1" stops inside its first step until "held-2",
        // which names the same adapter, has been admitted (its queued event): both hold the adapter at once.
        var gate = new ManualResetEventSlim();
        await using var server = await RunningServer.StartAsync(o => { o.Lora.Directory = TestLoras.Dir; o.Lora.CacheBytes = 1; }, b =>
        {
            b.Services.AddSingleton(s => new GatedGenerator(s.GetRequiredService<ImageScheduler>(), gate));
            b.Services.AddSingleton<IImageGenerator>(s => s.GetRequiredService<GatedGenerator>());
        });
        using var client = new InferenceClient(server.GrpcAddress);

        var first = client.GenerateAsync(Request("style", "held-1"));
        var second = client.GenerateAsync(Request("style", "held-2"));
        var images = await Task.WhenAll(first, second);
        Assert.Equal(images[0].Images[0].Data, images[1].Images[0].Data);
        Assert.Equal((1.0, 1.0, 0.0), await Metrics(server));       // loaded once, evicted once both were done
        Assert.Empty(await Loaded(client));
    }

    [Fact]
    public async Task A_file_replaced_on_disk_is_loaded_again_on_its_next_use()
    {
        string dir = Directory.CreateTempSubdirectory("server-loras-swap-").FullName;
        try
        {
            File.Copy(TestLoras.PathOf("style"), Path.Combine(dir, "swap.safetensors"));
            File.Copy(TestLoras.PathOf("other"), Path.Combine(dir, "other.safetensors"));
            await using var server = await RunningServer.StartAsync(o => o.Lora.Directory = dir);
            using var client = new InferenceClient(server.GrpcAddress);
            var style = (await client.GenerateAsync(Request("swap"))).Images[0].Data;
            var other = (await client.GenerateAsync(Request("other"))).Images[0].Data;
            Assert.NotEqual(style, other);

            File.Copy(TestLoras.PathOf("other"), Path.Combine(dir, "swap.safetensors"), overwrite: true);
            File.SetLastWriteTimeUtc(Path.Combine(dir, "swap.safetensors"), DateTime.UtcNow.AddMinutes(1));   // a new stamp even within the clock's resolution
            Assert.Equal(other, (await client.GenerateAsync(Request("swap"))).Images[0].Data);
            Assert.Equal((3.0, 0.0, 2.0 * TestLoras.LoadedBytes("other")), await Metrics(server));   // the old copy was dropped, not evicted
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>The scheduler with "held-1" blocked on the engine thread at its first step until "held-2" is queued.</summary>
    sealed class GatedGenerator(ImageScheduler inner, ManualResetEventSlim gate) : IImageGenerator
    {
        public IReadOnlyList<ModelDescriptor> Models => inner.Models;
        public bool Ready => inner.Ready;
        public string Phase => inner.Phase;
        public event Action? ReadinessChanged { add => inner.ReadinessChanged += value; remove => inner.ReadinessChanged -= value; }
        public JobPlan Plan(ImageJobRequest request) => inner.Plan(request);

        public Task<JobResult> GenerateAsync(ImageJobRequest request, Action<JobEvent>? onEvent = null, CancellationToken cancellationToken = default) =>
            inner.GenerateAsync(request, e =>
            {
                if (request.RequestId == "held-1" && e is JobEvent.Progress { Step: 1 } && !gate.Wait(TimeSpan.FromMinutes(2)))
                    throw new TimeoutException("held-2 was never queued");
                if (request.RequestId == "held-2" && e is JobEvent.Queued) gate.Set();
                onEvent?.Invoke(e);
            }, cancellationToken);
    }
}
