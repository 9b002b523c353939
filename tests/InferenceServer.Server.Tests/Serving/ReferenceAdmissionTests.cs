using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;
using InferenceServer.Tests.Http;

namespace InferenceServer.Tests.Serving;

/// <summary>
/// References are decoded only after admission (a queue slot is reserved first), straight to their capped size, and their
/// decoded bytes count against <c>Queue:MaxReferenceBytes</c> until the request ends.
/// </summary>
public sealed class ReferenceAdmissionTests
{
    static ImageJobRequest Job(string name, string size = "64x64", int steps = 2, params byte[][] references) => new()
    {
        RequestId = $"ref-{name}",
        Generation = new GenerationRequest { Prompt = name, Seed = 1, Size = new SizeRequest(size), Steps = steps, References = references },
    };

    /// <summary>A PNG whose header reads fine and whose pixel data is cut short: only decoding finds out.</summary>
    static byte[] DamagedPixels()
    {
        var png = HttpTestKit.Png(64, 64, seed: 9);
        return png[..(png.Length * 3 / 5)];
    }

    /// <summary>Starts a slow job and returns once the engine runs it (its first step event).</summary>
    static async Task<Task<JobResult>> Busy(RunningServer server, ImageJobRequest job)
    {
        var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var task = server.Scheduler.GenerateAsync(job, e => { if (e is JobEvent.Progress) running.TrySetResult(); });
        await Task.WhenAny(running.Task, task);
        Assert.False(task.IsCompleted, "the blocking job ended before it was seen running");
        return task;
    }

    [Fact]
    public async Task A_full_queue_refuses_before_decoding_the_references()
    {
        await using var server = await RunningServer.StartAsync(o => { o.Queue.MaxQueued = 1; o.Queue.MaxBatchImages = 1; o.Queue.GatherWindow = TimeSpan.Zero; });
        var blocker = await Busy(server, Job("blocker", "256x256", steps: 12));
        var queued = server.Scheduler.GenerateAsync(Job("queued"));
        Assert.Equal(1, server.Scheduler.QueueDepth);

        // Damaged pixel data would be a 400 if it were decoded; with no queue space it is never looked at.
        var full = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("damaged", references: DamagedPixels())));
        Assert.Equal(ErrorKind.ResourceExhausted, full.Kind);
        Assert.NotNull(full.RetryAfter);

        await Task.WhenAll(blocker, queued);
        var bad = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("damaged", references: DamagedPixels())));
        Assert.Equal(ErrorKind.InvalidArgument, bad.Kind);
        Assert.Equal("image", bad.Param);
        Assert.StartsWith("image 1: ", bad.Message);
        Assert.Equal(0, server.Scheduler.QueueDepth);
        Assert.Single((await server.Scheduler.GenerateAsync(Job("after"))).Generation.Images);   // refused and failed requests left no slot held
    }

    [Fact]
    public async Task Decoded_reference_bytes_are_budgeted_until_the_request_ends()
    {
        const long oneReference = 3L * 64 * 64;
        await using var server = await RunningServer.StartAsync(o => { o.Queue.MaxReferenceBytes = oneReference + 100; o.Queue.MaxBatchImages = 1; o.Queue.GatherWindow = TimeSpan.Zero; });
        var reference = HttpTestKit.Png(64, 64, seed: 3);
        var holder = await Busy(server, Job("holder", "256x256", steps: 12, reference));

        var over = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("second", references: reference)));
        Assert.Equal(ErrorKind.ResourceExhausted, over.Kind);
        Assert.Contains("decoded references", over.Message);
        Assert.NotNull(over.RetryAfter);

        var never = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("big", references: HttpTestKit.Png(128, 128))));
        Assert.Equal(ErrorKind.TooLarge, never.Kind);
        Assert.Equal("image", never.Param);
        Assert.Contains("MaxReferenceBytes", never.Message);

        // Text-to-image holds no reference bytes: admitted while the budget is spent.
        Assert.Single((await server.Scheduler.GenerateAsync(Job("text only"))).Generation.Images);
        await holder;
        Assert.Single((await server.Scheduler.GenerateAsync(Job("second", references: reference))).Generation.Images);
    }
}
