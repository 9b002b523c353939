using System.Collections.Concurrent;
using System.Globalization;
using Grpc.Core;
using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Server.Engine;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;
using EngineEvent = InferenceServer.Server.Engine.JobEvent;
using EngineResult = InferenceServer.Server.Engine.JobResult;
using Job = InferenceServer.Client.V1.Job;
using JobEvent = InferenceServer.Client.V1.JobEvent;

namespace InferenceServer.Tests.Grpc;

/// <summary>
/// The scheduler as the server sees it, with holds for tests: a request whose prompt contains a held word waits before
/// its first step until the test releases the word (or the request is cancelled). A watcher can so be attached while
/// a job is still queued or at step 0, and every step it then reports is one it watched happen.
/// </summary>
public sealed class HoldingGenerator(ImageScheduler inner) : IImageGenerator
{
    readonly ConcurrentDictionary<string, TaskCompletionSource> holds = new();
    public IReadOnlyList<ModelDescriptor> Models => inner.Models;
    public bool Ready => inner.Ready;
    public string Phase => inner.Phase;
    public event Action? ReadinessChanged { add => inner.ReadinessChanged += value; remove => inner.ReadinessChanged -= value; }
    public JobPlan Plan(ImageJobRequest request) => inner.Plan(request);

    /// <summary>From now on requests whose prompt contains <paramref name="word"/> wait until the returned source is set.</summary>
    public TaskCompletionSource Hold(string word) => holds.GetOrAdd(word, _ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    /// <summary>Lets every held request go (before the server stops: it waits for what it admitted).</summary>
    public void ReleaseAll()
    {
        foreach (var gate in holds.Values) gate.TrySetResult();
    }

    public async Task<EngineResult> GenerateAsync(ImageJobRequest request, Action<EngineEvent>? onEvent = null, CancellationToken cancellationToken = default)
    {
        foreach (var (word, gate) in holds)
            if (request.Generation.Prompt.Contains(word, StringComparison.Ordinal))
                await gate.Task.WaitAsync(cancellationToken);
        return await inner.GenerateAsync(request, onEvent, cancellationToken);
    }

    public static Task<RunningServer> StartServerAsync(Action<Server.Hosting.ServerOptions>? configure = null) =>
        RunningServer.StartAsync(configure, b =>
        {
            b.Services.AddSingleton(s => new HoldingGenerator(s.GetRequiredService<ImageScheduler>()));
            b.Services.AddSingleton<IImageGenerator>(s => s.GetRequiredService<HoldingGenerator>());
        });
}

/// <summary>One server for the job tests (its own SQLite store, at most 2 jobs per SubmitJobs call) and a client on it.</summary>
public sealed class JobsServerFixture : IAsyncLifetime
{
    public const int MaxJobsPerCall = 2;
    public RunningServer Server { get; private set; } = null!;
    public InferenceClient Client { get; private set; } = null!;
    public HoldingGenerator Generator => Server.App.Services.GetRequiredService<HoldingGenerator>();

    public async Task InitializeAsync()
    {
        Server = await HoldingGenerator.StartServerAsync(o => o.Jobs.MaxJobsPerCall = MaxJobsPerCall);
        Client = new InferenceClient(Server.GrpcAddress, options: new InferenceClientOptions { DefaultTimeout = TimeSpan.FromMinutes(2) });
    }

    public async Task DisposeAsync()
    {
        Client.Dispose();
        Generator.ReleaseAll();
        await Server.DisposeAsync();
    }
}

/// <summary>The typed JobService calls of <see cref="InferenceClient"/> against a real server (tiny model, SQLite job store).</summary>
public sealed class ClientJobsTests(JobsServerFixture fixture, ITestOutputHelper output) : IClassFixture<JobsServerFixture>
{
    InferenceClient Client => fixture.Client;

    static string Name(JobState state) => state.ToString().ToLowerInvariant();

    static GenerateRequest Small(string prompt, long seed, uint steps = 1) => new() { Prompt = prompt, Width = 64, Height = 64, Steps = steps, Seed = seed };

    [Fact]
    public async Task A_job_is_watched_from_its_state_through_every_step_to_succeeded_and_its_images_equal_a_live_generation()
    {
        var gate = fixture.Generator.Hold("[watched]");
        var request = Small("a lighthouse at dusk [watched]", seed: 5, steps: 2);
        var submitted = await Client.SubmitJobAsync(new SubmitJobRequest { Request = request });
        Assert.True(submitted.Created);
        Assert.Equal(JobState.Queued, submitted.Job.Status);
        string id = submitted.Job.Id;

        var events = new List<JobEvent>();
        await foreach (var e in Client.WatchJobAsync(id))
        {
            events.Add(e);
            gate.TrySetResult();                                      // the watch has begun: let the job run
        }
        output.WriteLine(string.Join(", ", events.Select(e => $"{e.Type}({Name(e.Job.Status)} {e.Job.Step}/{e.Job.TotalSteps})")));

        // First the job's state when the watch began (held before its first step: queued, or claimed at step 0).
        var first = events[0];
        Assert.Contains(first.Type, new[] { "queued", "running" });
        Assert.Equal(Name(first.Job.Status), first.Type);
        Assert.Equal(0u, first.Job.Step);
        Assert.All(events, e => Assert.Equal(id, e.Job.Id));
        // Then the run starting (unless that was the first event), each step in order, and the end.
        var rest = new List<string> { "progress", "progress", "succeeded" };
        if (first.Type == "queued") rest.Insert(0, "running");
        Assert.Equal(rest, events.Skip(1).Select(e => e.Type));
        var progress = events.Where(e => e.Type == "progress").Select(e => e.Job).ToList();
        Assert.Equal([1u, 2u], progress.Select(j => j.Step));
        Assert.All(progress, j => Assert.Equal((JobState.Running, 2u), (j.Status, j.TotalSteps)));
        var done = events[^1].Job;
        Assert.Equal(JobState.Succeeded, done.Status);
        var info = Assert.Single(done.Result.Images);
        Assert.Equal(("image/png", 64u, 64u, 5L), (info.MimeType, info.Width, info.Height, info.Seed));

        // Finished: the wait returns at once, the job reads the same, and its image is what a live call makes of the same request.
        Assert.Equal(JobState.Succeeded, (await Client.WaitForJobAsync(id)).Status);
        Assert.Equal(JobState.Succeeded, (await Client.GetJobAsync(id)).Status);
        var stored = Assert.Single(await Client.GetJobImagesAsync(id));
        Assert.Equal((64, 64), TestImages.Size(stored.Data));
        Assert.Equal((ulong)stored.Data.Length, info.Bytes);
        var live = Assert.Single((await Client.GenerateAsync(request)).Images);
        Assert.Equal(live.Data, stored.Data);
        Assert.Equal(stored.Data, Assert.Single(await Client.GetJobImagesAsync(id, indexes: [0])).Data);
    }

    [Fact]
    public async Task A_running_job_is_cancelled_at_its_next_step_and_WaitForJob_returns_it_cancelled()
    {
        fixture.Generator.Hold("[cancelled]");                        // never released: it stays before its first step
        var submitted = await Client.SubmitJobAsync(new SubmitJobRequest { Request = Small("a kite [cancelled]", seed: 1) });
        await foreach (var e in Client.WatchJobAsync(submitted.Job.Id))
            if (e.Type == "running") break;                           // claimed and held: running at step 0

        var asked = await Client.CancelJobAsync(submitted.Job.Id);
        Assert.True(asked.CancelRequested || asked.Status == JobState.Cancelled, $"{asked.Status}, cancel_requested {asked.CancelRequested}");
        var final = await Client.WaitForJobAsync(submitted.Job.Id, TimeSpan.FromMinutes(1));
        Assert.Equal(JobState.Cancelled, final.Status);
        Assert.False(final.CancelRequested);
        Assert.Equal(JobState.Cancelled, (await Client.CancelJobAsync(submitted.Job.Id)).Status);   // finished: unchanged
        var e2 = await Assert.ThrowsAsync<RpcException>(() => Client.GetJobImagesAsync(submitted.Job.Id, indexes: [0]));
        Assert.Equal(StatusCode.NotFound, e2.StatusCode);
    }

    [Fact]
    public async Task ListAllJobs_follows_next_page_token_through_every_job_oldest_first()
    {
        string batch = "paging-" + Guid.NewGuid().ToString("N");
        SubmitJobRequest Paged(int i) => new() { Request = Small($"page {i}", seed: i), Batch = batch, Labels = { ["i"] = i.ToString(CultureInfo.InvariantCulture) } };
        var two = await Client.SubmitJobsAsync([Paged(0), Paged(1)]);
        var third = await Client.SubmitJobAsync(Paged(2));
        string[] ids = [two[0].Job.Id, two[1].Job.Id, third.Job.Id];
        Assert.Equal(["0", "1"], two.Select(r => r.Job.Labels["i"]));   // answers in the order submitted
        Assert.Equal(3, ids.Distinct().Count());

        var firstPage = await Client.ListJobsAsync(new ListJobsRequest { Batch = batch, Limit = 1 });
        Assert.Equal(ids[0], Assert.Single(firstPage.Jobs).Id);
        Assert.NotEmpty(firstPage.NextPageToken);

        var all = new List<Job>();
        await foreach (var job in Client.ListAllJobsAsync(new ListJobsRequest { Batch = batch, Limit = 1 }))
            all.Add(job);
        Assert.Equal(ids, all.Select(j => j.Id));
        var labelled = new List<Job>();
        await foreach (var job in Client.ListAllJobsAsync(new ListJobsRequest { Batch = batch, Label = "i:1" }))
            labelled.Add(job);
        Assert.Equal(ids[1], Assert.Single(labelled).Id);

        foreach (string id in ids) Assert.Equal(JobState.Succeeded, (await Client.WaitForJobAsync(id)).Status);
        var counts = await Client.GetBatchAsync(batch);
        Assert.Equal((3u, 3u), (counts.Total, counts.Succeeded));
    }

    [Fact]
    public async Task The_same_idempotency_key_returns_the_first_job_with_created_false()
    {
        string key = "idem-" + Guid.NewGuid().ToString("N");
        var first = await Client.SubmitJobAsync(new SubmitJobRequest { Request = Small("a boat", seed: 2), IdempotencyKey = key });
        var again = await Client.SubmitJobAsync(new SubmitJobRequest { Request = Small("a boat", seed: 2), IdempotencyKey = key });
        Assert.True(first.Created);
        Assert.False(again.Created);
        Assert.Equal(first.Job.Id, again.Job.Id);
        var inBatch = Assert.Single(await Client.SubmitJobsAsync([new SubmitJobRequest { Request = Small("a boat", seed: 2), IdempotencyKey = key }]));
        Assert.Equal((false, first.Job.Id), (inBatch.Created, inBatch.Job.Id));
        Assert.Equal(JobState.Succeeded, (await Client.WaitForJobAsync(first.Job.Id)).Status);
    }

    [Fact]
    public async Task An_unknown_id_is_NOT_FOUND_on_every_call()
    {
        const string id = "no-such-job";
        async Task<RpcException> Fails(Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(StatusCode.NotFound, e.StatusCode);
            return e;
        }
        Assert.Equal("id", TestImages.Trailer(await Fails(() => Client.GetJobAsync(id)), "field"));
        await Fails(() => Client.CancelJobAsync(id));
        await Fails(() => Client.GetJobImagesAsync(id));
        await Fails(() => Client.WaitForJobAsync(id));
        await Fails(async () => { await foreach (var _ in Client.WatchJobAsync(id)) { } });
    }

    [Fact]
    public async Task SubmitJobs_over_the_servers_limit_is_INVALID_ARGUMENT_on_field_jobs()
    {
        string batch = "limit-" + Guid.NewGuid().ToString("N");
        var jobs = Enumerable.Range(0, JobsServerFixture.MaxJobsPerCall + 1).Select(i => new SubmitJobRequest { Request = Small("a tree", seed: i), Batch = batch });
        var e = await Assert.ThrowsAsync<RpcException>(() => Client.SubmitJobsAsync(jobs));
        output.WriteLine(e.Status.Detail);
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal("jobs", TestImages.Trailer(e, "field"));
        var none = await Assert.ThrowsAsync<RpcException>(() => Client.GetBatchAsync(batch));   // nothing was queued
        Assert.Equal(StatusCode.NotFound, none.StatusCode);
    }

    [Fact]
    public async Task A_page_token_the_server_did_not_make_is_INVALID_ARGUMENT_on_field_page_token()
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => Client.ListJobsAsync(new ListJobsRequest { PageToken = "garbage" }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal("page_token", TestImages.Trailer(e, "field"));
    }

    /// <summary><see cref="InferenceClient.ForReplicas"/>: round_robin over real servers (each its own), retries on UNAVAILABLE, dns:/// addresses.</summary>
    public sealed class Replicas(ITestOutputHelper output)
    {
        /// <summary>gRPC calls the server answered with <paramref name="code"/>, from its <c>/metrics</c>.</summary>
        static async Task<int> Calls(RunningServer server, StatusCode code)
        {
            using var http = new HttpClient { BaseAddress = server.HttpBase };
            string metrics = await http.GetStringAsync("metrics");
            string? line = metrics.Split('\n').SingleOrDefault(l => l.StartsWith("inference_requests_total{", StringComparison.Ordinal)
                && l.Contains("origin=\"grpc\"", StringComparison.Ordinal) && l.Contains($"code=\"{code}\"", StringComparison.Ordinal));
            return line is null ? 0 : (int)double.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
        }

        static Task<int> OkCalls(RunningServer server) => Calls(server, StatusCode.OK);

        [Fact]
        public async Task Calls_go_round_robin_over_two_servers_and_all_succeed_while_one_drains_and_after_it_stops()
        {
            // A's pushback (how long a client waits before retrying its UNAVAILABLE) short, so that the retries are quick.
            var a = await RunningServer.StartAsync(o => o.Queue.RetryAfter = TimeSpan.FromMilliseconds(50));
            bool aStopped = false;
            try
            {
                await using var b = await RunningServer.StartAsync();
                using var client = InferenceClient.ForReplicas([a.GrpcAddress, b.GrpcAddress],
                    options: new InferenceClientOptions { DefaultTimeout = TimeSpan.FromMinutes(1) });

                const int N = 20;
                for (int i = 0; i < N; i++) Assert.NotEmpty(await client.ListModelsAsync());
                var (onA, onB) = (await OkCalls(a), await OkCalls(b));
                output.WriteLine($"both up: {onA} calls on A, {onB} on B");
                Assert.Equal(N, onA + onB);
                Assert.True(onA > 0 && onB > 0, $"round robin should use both replicas: A {onA}, B {onB}");
                // A drains: still connected, it refuses generations with UNAVAILABLE, and each is retried on B.
                a.Scheduler.BeginDrain();
                int okOnB = await OkCalls(b);
                for (int i = 0; i < 4; i++)
                    Assert.Single((await client.GenerateAsync(new GenerateRequest { Prompt = "a fox", Width = 64, Height = 64, Steps = 1, Seed = i })).Images);
                int refusedByA = await Calls(a, StatusCode.Unavailable);
                output.WriteLine($"A draining: {refusedByA} UNAVAILABLE from A, {await OkCalls(b) - okOnB} generations on B");
                Assert.True(refusedByA > 0, "round robin should have sent some generations to A first");
                Assert.Equal(4, await OkCalls(b) - okOnB);

                await a.DisposeAsync();                                   // graceful stop: GOAWAY, then the port is closed
                aStopped = true;
                int beforeB = await OkCalls(b);
                for (int i = 0; i < N; i++) Assert.NotEmpty(await client.ListModelsAsync());
                int afterB = await OkCalls(b);
                output.WriteLine($"A stopped: {afterB - beforeB} of {N} calls on B");
                Assert.Equal(N, afterB - beforeB);
                var job = await client.SubmitJobAsync(new SubmitJobRequest
                {
                    Request = new GenerateRequest { Prompt = "a fox", Width = 64, Height = 64, Steps = 1 }, IdempotencyKey = "rr-1",
                });
                Assert.Equal(JobState.Succeeded, (await client.WaitForJobAsync(job.Job.Id)).Status);
            }
            finally
            {
                if (!aStopped) await a.DisposeAsync();
            }
        }

        [Fact]
        public async Task A_replica_that_is_down_from_the_start_is_skipped()
        {
            await using var up = await RunningServer.StartAsync();
            // A loopback port nobody listens on: bound, read, released.
            var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
            probe.Start();
            int closedPort = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            using var client = InferenceClient.ForReplicas([new Uri($"http://127.0.0.1:{closedPort}"), up.GrpcAddress],
                options: new InferenceClientOptions { DefaultTimeout = TimeSpan.FromMinutes(1) });
            for (int i = 0; i < 10; i++) Assert.NotEmpty(await client.ListModelsAsync());
            Assert.Equal(10, await OkCalls(up));
        }

        [Fact]
        public async Task A_dns_address_resolves_to_the_replicas()
        {
            await using var server = await RunningServer.StartAsync();
            // localhost may also resolve to ::1, where nothing listens (the server binds 127.0.0.1): that address is skipped.
            using var client = InferenceClient.ForReplicas([new Uri($"dns:///localhost:{server.GrpcPort}")],
                options: new InferenceClientOptions { DefaultTimeout = TimeSpan.FromMinutes(1) });
            Assert.NotEmpty(await client.ListModelsAsync());
            Assert.Equal(1, await OkCalls(server));
        }

        [Fact]
        public void Replica_addresses_must_agree_on_a_scheme()
        {
            Assert.Throws<ArgumentException>(() => InferenceClient.ForReplicas([]));
            Assert.Throws<ArgumentException>(() => InferenceClient.ForReplicas([new Uri("http://a:1"), new Uri("https://b:1")]));
            Assert.Throws<ArgumentException>(() => InferenceClient.ForReplicas([new Uri("dns:///a:1"), new Uri("http://b:1")]));
            Assert.Throws<ArgumentException>(() => InferenceClient.ForReplicas([new Uri("ftp://a:1")]));
            using var tls = InferenceClient.ForReplicas([new Uri("https://a:1"), new Uri("https://b:2")]);   // nothing connects until a call
        }
    }
}
