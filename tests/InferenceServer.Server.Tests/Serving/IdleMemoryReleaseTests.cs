using System.Net;
using System.Net.Http.Json;
using InferenceServer.Server.Engine;
using Microsoft.Extensions.DependencyInjection;

namespace InferenceServer.Tests.Serving;

/// <summary>The server gives memory back once it is quiet: after a batch, and after requests refused before any batch.</summary>
public sealed class IdleMemoryReleaseTests
{
    [Fact]
    public async Task Memory_is_released_once_the_last_request_has_ended_even_a_refused_one()
    {
        await using var server = await RunningServer.StartAsync(o => o.Queue.ReleaseMemoryAfterIdle = TimeSpan.FromMilliseconds(50));
        var memory = server.App.Services.GetRequiredService<IdleMemoryRelease>();
        Assert.Same(memory, server.Scheduler.Memory);

        async Task ReleasedAfter(Func<Task> work)
        {
            long before = memory.Releases;
            var released = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            void OnReleased() { if (memory.Releases > before) released.TrySetResult(); }
            memory.Released += OnReleased;
            try
            {
                await work();
                await released.Task.WaitAsync(TimeSpan.FromMinutes(1));
            }
            finally { memory.Released -= OnReleased; }
        }

        using var http = new HttpClient { BaseAddress = server.HttpBase };
        // Refused before the engine sees it: only the front end knows the server went quiet.
        await ReleasedAfter(async () =>
        {
            using var r = await http.PostAsJsonAsync("v1/images/generations", new { prompt = "x", model = new string('m', 1 << 20) });
            Assert.Equal(HttpStatusCode.NotFound, r.StatusCode);
        });
        // A generation: released after the batch and the answer.
        await ReleasedAfter(async () =>
        {
            using var r = await http.PostAsJsonAsync("v1/images/generations", new { prompt = "x", size = "64x64", steps = 1, response_format = "b64_json" });
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        });
    }
}
