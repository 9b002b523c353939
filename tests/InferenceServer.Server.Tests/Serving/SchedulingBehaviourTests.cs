using System.Diagnostics;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Serving;

/// <summary>Batching, overload, cancellation, deadlines and draining, against a real server's scheduler (the tiny model).</summary>
public sealed class SchedulingBehaviourTests(ITestOutputHelper output)
{
    static ImageJobRequest Job(string prompt, long seed, string size = "64x64", int steps = 2, int n = 1) => new()
    {
        RequestId = $"t-{prompt}-{seed}",
        Generation = new GenerationRequest { Prompt = prompt, Seed = seed, Size = new SizeRequest(size), Count = n, Steps = steps },
    };

    [Fact]
    public async Task Concurrent_same_size_requests_share_batches_and_give_the_images_of_one_by_one()
    {
        await using var server = await RunningServer.StartAsync(o =>
        {
            o.Queue.MaxBatchImages = 8;
            o.Queue.GatherWindow = TimeSpan.FromMilliseconds(300);
        });
        var jobs = Enumerable.Range(0, 8).Select(i => Job($"prompt {i % 3}", 100 + i, steps: 3)).ToList();
        long before = server.Scheduler.BatchesRun;
        var together = await Task.WhenAll(jobs.Select(j => server.Scheduler.GenerateAsync(j)));
        long batches = server.Scheduler.BatchesRun - before;
        output.WriteLine($"8 concurrent requests ran in {batches} engine batches; batch sizes {string.Join(",", together.Select(r => r.BatchRequests))}");
        Assert.True(batches < 8, $"8 concurrent requests ran in {batches} batches");
        Assert.Contains(together, r => r.BatchRequests > 1);

        for (int i = 0; i < jobs.Count; i++)
        {
            var alone = await server.Scheduler.GenerateAsync(jobs[i]);
            Assert.Equal(1, alone.BatchRequests);
            Assert.Equal(alone.Generation.Images[0].Image.Bytes, together[i].Generation.Images[0].Image.Bytes);
        }
    }

    [Fact]
    public async Task Over_the_queue_limit_the_excess_is_refused_at_once_and_every_accepted_request_completes()
    {
        const int limit = 4;
        await using var server = await RunningServer.StartAsync(o => { o.Queue.MaxQueued = limit; o.Queue.MaxBatchImages = 1; });
        var refusedAt = new List<double>();
        var completedAt = new List<double>();
        var clock = Stopwatch.StartNew();
        var tasks = Enumerable.Range(0, 3 * limit).Select(i => Task.Run(async () =>
        {
            try
            {
                await server.Scheduler.GenerateAsync(Job("busy", i, size: "256x256", steps: 6));
                lock (completedAt) completedAt.Add(clock.Elapsed.TotalMilliseconds);
            }
            catch (ServiceException e) when (e.Kind == ErrorKind.ResourceExhausted)
            {
                Assert.NotNull(e.RetryAfter);
                lock (refusedAt) refusedAt.Add(clock.Elapsed.TotalMilliseconds);
            }
        })).ToList();
        await Task.WhenAll(tasks);
        output.WriteLine($"refused {refusedAt.Count} (last at {refusedAt.DefaultIfEmpty().Max():0} ms), completed {completedAt.Count} (first at {completedAt.Min():0} ms)");
        Assert.Equal(3 * limit, refusedAt.Count + completedAt.Count);
        Assert.InRange(refusedAt.Count, limit, 3 * limit - limit);
        Assert.True(refusedAt.Max() < completedAt.Min(), "every refusal must come before the first accepted request finishes");
        Assert.Equal(0, server.Scheduler.QueueDepth);
    }

    [Fact]
    public async Task Cancelling_mid_denoise_stops_within_one_step_and_the_server_keeps_serving()
    {
        await using var server = await RunningServer.StartAsync();
        using var cts = new CancellationTokenSource();
        var steps = new List<int>();
        int stepAtCancel = -1;
        var job = Job("cancel me", 1, size: "256x256", steps: 40);
        var e = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(job, ev =>
        {
            if (ev is not JobEvent.Progress p) return;
            lock (steps) steps.Add(p.Step);
            if (p.Step == 2) { stepAtCancel = p.Step; cts.Cancel(); }
        }, cts.Token));
        Assert.Equal(ErrorKind.Cancelled, e.Kind);
        await Task.Delay(200);   // any late step would have been reported by now
        lock (steps) Assert.True(steps.Max() <= stepAtCancel + 1, $"steps after cancel: {string.Join(",", steps)}");
        var next = await server.Scheduler.GenerateAsync(Job("next", 2));
        Assert.Single(next.Generation.Images);
    }

    [Fact]
    public async Task A_deadline_mid_denoise_answers_deadline_exceeded()
    {
        await using var server = await RunningServer.StartAsync();
        int last = 0;
        var e = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(
            Job("slow", 3, size: "512x512", steps: 100) with { Timeout = TimeSpan.FromMilliseconds(400) },
            ev => { if (ev is JobEvent.Progress p) last = p.Step; }));
        Assert.Equal(ErrorKind.DeadlineExceeded, e.Kind);
        Assert.InRange(last, 0, 99);
        Assert.Single((await server.Scheduler.GenerateAsync(Job("after", 4))).Generation.Images);
    }

    [Fact]
    public async Task Stopping_drains_in_flight_requests_and_refuses_new_ones()
    {
        var server = await RunningServer.StartAsync(o => o.Queue.MaxBatchImages = 1);
        var inFlight = Enumerable.Range(0, 3).Select(i => server.Scheduler.GenerateAsync(Job("drain", i, size: "128x128", steps: 8))).ToList();
        while (server.Scheduler.QueueDepth < 2) await Task.Delay(5);
        var stop = server.App.StopAsync();                         // what SIGTERM triggers
        var refused = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("late", 9)));
        Assert.Equal(ErrorKind.Unavailable, refused.Kind);
        Assert.False(server.Scheduler.Ready);
        var results = await Task.WhenAll(inFlight);
        Assert.All(results, r => Assert.Single(r.Generation.Images));
        await stop;
        await server.DisposeAsync();
    }

    [Fact]
    public async Task A_different_size_waits_for_at_most_one_batch_of_others_arriving_after_it()
    {
        // Engine busy with a slow job; then A1, B1 (another size), A2..A5 queue up. The oldest job always runs next, so B1
        // runs right after A1's batch (A1 + A2 at 2 images per batch), before A3..A5 which came after it.
        await using var server = await RunningServer.StartAsync(o => { o.Queue.MaxBatchImages = 2; o.Queue.GatherWindow = TimeSpan.Zero; });
        var started = new TaskCompletionSource();
        var blocker = server.Scheduler.GenerateAsync(Job("blocker", 0, size: "256x256", steps: 12), e => { if (e is JobEvent.Progress) started.TrySetResult(); });
        await started.Task;
        var order = new List<string>();
        async Task Run(string name, string size)
        {
            await server.Scheduler.GenerateAsync(Job(name, 1, size: size));
            lock (order) order.Add(name);
        }
        var tasks = new List<Task> { Run("A1", "64x64"), Run("B1", "128x64") };
        for (int i = 2; i <= 5; i++) tasks.Add(Run($"A{i}", "64x64"));
        Assert.Equal(6, server.Scheduler.QueueDepth);
        await Task.WhenAll(tasks.Append(blocker));
        output.WriteLine(string.Join(" ", order));
        Assert.True(order.IndexOf("B1") < order.IndexOf("A3"), $"completion order {string.Join(" ", order)}");
        Assert.True(order.IndexOf("B1") < order.IndexOf("A5"));
    }
}
