using System.Text.Json;
using InferenceServer.Tests.Http;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;

namespace InferenceServer.Tests.Jobs;

/// <summary>Cancellation, attempts, retention, webhooks and per-key limits of durable jobs, each on its own server.</summary>
public sealed class JobLifecycleTests
{
    static object Job(string prompt, int steps = 2, object? extra = null)
    {
        var body = new Dictionary<string, object> { ["prompt"] = prompt, ["size"] = "64x64", ["steps"] = steps, ["seed"] = 3 };
        if (extra is not null) foreach (var p in JsonSerializer.SerializeToElement(extra).EnumerateObject()) body[p.Name] = p.Value;
        return body;
    }

    static async Task<string> Submit(HttpClient http, object body, string? apiKey = null, int expect = 202)
    {
        var (status, job) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", body, apiKey);
        Assert.True(status == expect, $"expected {expect}, got {status}: {job}");
        return job.TryGetProperty("id", out var id) ? id.GetString()! : "";
    }

    [Fact]
    public async Task A_queued_job_is_cancelled_at_once_and_a_running_one_at_its_next_step()
    {
        await using var server = await SwitchableGenerator.StartServerAsync(o => o.Queue.MaxBatchImages = 1);
        var generator = server.App.Services.GetRequiredService<SwitchableGenerator>();
        using var http = HttpTestKit.NewHttp(server);
        string held = await Submit(http, Job("hold this", steps: 4));
        Assert.True(await generator.HeldAtStep.WaitAsync(JobsHttp.StreamLimit), "the held job never reached its first step");
        string second = await Submit(http, Job("second"));
        await JobsHttp.UntilEvent(http, second, "running");            // the runner holds two jobs now: one engine batch running, one waiting
        string third = await Submit(http, Job("third"));
        var (_, queued) = await JobsHttp.Send(http, HttpMethod.Get, $"/v1/jobs/{third}");
        Assert.Equal(("queued", 0), (queued.GetProperty("status").GetString(), queued.GetProperty("queue_position").GetInt32()));

        var (s1, cancelledQueued) = await JobsHttp.Send(http, HttpMethod.Post, $"/v1/jobs/{third}/cancel");
        Assert.Equal((200, "cancelled"), (s1, cancelledQueued.GetProperty("status").GetString()));

        var (s2, cancelling) = await JobsHttp.Send(http, HttpMethod.Post, $"/v1/jobs/{held}/cancel");
        Assert.Equal((200, "running", true), (s2, cancelling.GetProperty("status").GetString(), cancelling.GetProperty("cancel_requested").GetBoolean()));
        // The runner sees the request and stops the run's token; only then is the engine let go, so it stops at step 2.
        var token = generator.Tokens[held];
        var stopped = new TaskCompletionSource();
        using (token.Register(() => stopped.TrySetResult())) await stopped.Task.WaitAsync(JobsHttp.StreamLimit);
        generator.Release();

        var heldEvents = await JobsHttp.Events(http, held);
        Assert.Equal("cancelled", heldEvents[^1].Type);
        Assert.True(heldEvents[^1].Job.GetProperty("progress").GetProperty("step").GetInt32() < 4);
        Assert.Equal("succeeded", (await JobsHttp.Finished(http, second)).GetProperty("status").GetString());
        Assert.DoesNotContain(third, generator.Started);                 // never ran
    }

    [Fact]
    public async Task A_job_that_always_fails_is_tried_max_attempts_times_then_failed_with_the_reason()
    {
        await using var server = await SwitchableGenerator.StartServerAsync();
        var generator = server.App.Services.GetRequiredService<SwitchableGenerator>();
        using var http = HttpTestKit.NewHttp(server);
        string id = await Submit(http, Job("explode", extra: new { max_attempts = 2 }));
        var job = await JobsHttp.Finished(http, id);
        Assert.Equal(("failed", 2, "internal"), (job.GetProperty("status").GetString(), job.GetProperty("attempts").GetInt32(), job.GetProperty("error").GetProperty("code").GetString()));
        Assert.Contains("no attempt left", job.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(2, generator.Started.Count(s => s == id));
    }

    [Fact]
    public async Task After_its_retention_a_job_answers_404_saying_it_expired()
    {
        await using var server = await RunningServer.StartAsync(o => o.Jobs.Retention = TimeSpan.FromMilliseconds(300));
        using var http = HttpTestKit.NewHttp(server);
        string id = await Submit(http, Job("short-lived"));
        Assert.Equal("succeeded", (await JobsHttp.Finished(http, id)).GetProperty("status").GetString());
        var until = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        while (true)
        {
            using var response = await http.GetAsync($"/v1/jobs/{id}/images/0");
            if ((int)response.StatusCode == 404)
            {
                var body = await HttpTestKit.Body(response);
                Assert.Contains("expired", body.GetProperty("error").GetProperty("message").GetString());
                break;
            }
            Assert.True(DateTime.UtcNow < until, "the job never expired");
            await Task.Delay(50);                                        // the housekeeping timer runs every 100 ms here
        }
        var (status, _) = await JobsHttp.Send(http, HttpMethod.Get, $"/v1/jobs/{id}");
        Assert.Equal(404, status);
        var (_, list) = await JobsHttp.Send(http, HttpMethod.Get, "/v1/jobs");
        Assert.DoesNotContain(list.GetProperty("data").EnumerateArray(), j => j.GetProperty("id").GetString() == id);
    }

    [Fact]
    public async Task A_webhook_is_signed_retried_after_a_500_and_each_delivery_recorded_and_private_targets_are_refused()
    {
        await using var receiver = await WebhookTests.Receiver.StartAsync();
        receiver.Next.Enqueue(500);
        await using var server = await RunningServer.StartAsync(o =>
        {
            o.Jobs.WebhookSecret = WebhookTests.Secret;
            o.Jobs.WebhookAllow = ["127.0.0.1"];
            o.Jobs.WebhookRetryDelays = [.. Enumerable.Repeat(TimeSpan.FromMilliseconds(100), 3)];
        });
        using var http = HttpTestKit.NewHttp(server);
        string id = await Submit(http, Job("hooked", extra: new { webhook_url = receiver.Url }));
        await receiver.NextDelivery().WaitAsync(JobsHttp.StreamLimit);
        await receiver.NextDelivery().WaitAsync(JobsHttp.StreamLimit);
        Assert.All(receiver.Got, g => Assert.True(g.Verified));
        var delivered = JsonDocument.Parse(receiver.Got[1].Body).RootElement;
        Assert.Equal((id, "succeeded"), (delivered.GetProperty("id").GetString(), delivered.GetProperty("status").GetString()));

        var webhook = await WebhookState(http, id, "delivered");
        Assert.Equal([500, 204], webhook.GetProperty("deliveries").EnumerateArray().Select(d => d.GetProperty("status").GetInt32()));

        // ::1 is not allowed (only 127.0.0.1 is): refused at connect on every try, then given up; the receiver sees nothing.
        string refused = await Submit(http, Job("hooked elsewhere", extra: new { webhook_url = receiver.Url.Replace("127.0.0.1", "[::1]") }));
        var gaveUp = await WebhookState(http, refused, "failed");
        var tries = gaveUp.GetProperty("deliveries").EnumerateArray().ToList();
        Assert.Equal(4, tries.Count);
        Assert.All(tries, t => Assert.Contains("refused", t.GetProperty("error").GetString()));
        Assert.Equal(2, receiver.Got.Count);
    }

    static async Task<JsonElement> WebhookState(HttpClient http, string id, string state)
    {
        await JobsHttp.Finished(http, id);
        var until = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        while (true)
        {
            var (_, job) = await JobsHttp.Send(http, HttpMethod.Get, $"/v1/jobs/{id}");
            var webhook = job.GetProperty("webhook");
            if (webhook.GetProperty("state").GetString() == state) return webhook;
            Assert.True(DateTime.UtcNow < until, $"webhook never {state}: {webhook}");
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task Each_API_key_has_its_own_queued_job_limit_and_without_a_secret_webhooks_are_refused()
    {
        await using var server = await SwitchableGenerator.StartServerAsync(o =>
        {
            o.ApiKeys = ["key-one", "key-two"];
            o.Jobs.MaxQueuedPerKey = 1;
            o.Queue.MaxBatchImages = 1;
        });
        var generator = server.App.Services.GetRequiredService<SwitchableGenerator>();
        using var http = HttpTestKit.NewHttp(server);
        http.DefaultRequestHeaders.Authorization = new("Bearer", "key-one");
        string first = await Submit(http, Job("hold"), "key-one");
        Assert.True(await generator.HeldAtStep.WaitAsync(JobsHttp.StreamLimit), "the held job never reached its first step");
        string second = await Submit(http, Job("b"), "key-one");
        await JobsHttp.UntilEvent(http, second, "running");
        await Submit(http, Job("c"), "key-one");                         // queued: the key's one
        var (status, error) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", Job("d"), "key-one");
        Assert.Equal(429, status);
        Assert.Contains("limit of 1", error.GetProperty("error").GetProperty("message").GetString());
        string others = await Submit(http, Job("e"), "key-two");         // another key's queue
        // Each key sees only its own jobs: another key's id is 404, and lists and batches hold only the caller's.
        Assert.Equal(404, (await JobsHttp.Send(http, HttpMethod.Get, $"/v1/jobs/{first}", apiKey: "key-two")).Status);
        Assert.Equal(404, (await JobsHttp.Send(http, HttpMethod.Post, $"/v1/jobs/{first}/cancel", apiKey: "key-two")).Status);
        var (_, theirs) = await JobsHttp.Send(http, HttpMethod.Get, "/v1/jobs", apiKey: "key-two");
        Assert.Equal([others], theirs.GetProperty("data").EnumerateArray().Select(j => j.GetProperty("id").GetString()));
        var (noSecret, why) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", Job("f", extra: new { webhook_url = "https://hooks.example/x" }), "key-two");
        Assert.Equal((400, "webhook_url"), (noSecret, why.GetProperty("error").GetProperty("param").GetString()));
        generator.Release();
    }
}
