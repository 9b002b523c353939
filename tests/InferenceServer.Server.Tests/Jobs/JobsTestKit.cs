using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using InferenceServer.Server.Engine;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;

namespace InferenceServer.Tests.Jobs;

/// <summary>
/// The scheduler as the job runner sees it, with two switches for tests: a prompt containing "hold" stops on the engine
/// thread at its first step until <see cref="Release"/>; one containing "explode" fails (an internal error, retryable).
/// </summary>
public sealed class SwitchableGenerator(ImageScheduler inner) : IImageGenerator
{
    readonly ManualResetEventSlim released = new(false);
    public ConcurrentQueue<string> Started { get; } = new();
    /// <summary>The cancellation token each run got, by job id (the last run's).</summary>
    public ConcurrentDictionary<string, CancellationToken> Tokens { get; } = new();
    public SemaphoreSlim HeldAtStep { get; } = new(0);
    public IReadOnlyList<ModelDescriptor> Models => inner.Models;
    public bool Ready => inner.Ready;
    public string Phase => inner.Phase;
    public event Action? ReadinessChanged { add => inner.ReadinessChanged += value; remove => inner.ReadinessChanged -= value; }
    public JobPlan Plan(ImageJobRequest request) => inner.Plan(request);

    public void Release() => released.Set();

    public Task<JobResult> GenerateAsync(ImageJobRequest request, Action<JobEvent>? onEvent = null, CancellationToken cancellationToken = default)
    {
        Started.Enqueue(request.RequestId);
        Tokens[request.RequestId] = cancellationToken;
        if (request.Generation.Prompt.Contains("explode", StringComparison.Ordinal))
            throw new InvalidOperationException("the test generator exploded");
        bool hold = request.Generation.Prompt.Contains("hold", StringComparison.Ordinal);
        return inner.GenerateAsync(request, e =>
        {
            if (hold && e is JobEvent.Progress { Step: 1 })
            {
                HeldAtStep.Release();
                if (!released.Wait(TimeSpan.FromMinutes(2))) throw new TimeoutException("the test never released the held job");
            }
            onEvent?.Invoke(e);
        }, cancellationToken);
    }

    public static Task<RunningServer> StartServerAsync(Action<Server.Hosting.ServerOptions>? configure = null) =>
        RunningServer.StartAsync(configure, b =>
        {
            b.Services.AddSingleton(s => new SwitchableGenerator(s.GetRequiredService<ImageScheduler>()));
            b.Services.AddSingleton<IImageGenerator>(s => s.GetRequiredService<SwitchableGenerator>());
        });
}

static class JobsHttp
{
    /// <summary>Longest a test follows one job's events (a bound against hangs, not a timing).</summary>
    public static readonly TimeSpan StreamLimit = TimeSpan.FromMinutes(3);

    public static async Task<(int Status, JsonElement Body)> Send(HttpClient http, HttpMethod method, string path, object? body = null, string? apiKey = null,
        string? idempotencyKey = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null) request.Content = new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json");
        if (apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        if (idempotencyKey is not null) request.Headers.Add("Idempotency-Key", idempotencyKey);
        using var response = await http.SendAsync(request);
        string text = await response.Content.ReadAsStringAsync();
        try { return ((int)response.StatusCode, JsonDocument.Parse(text).RootElement.Clone()); }
        catch (JsonException) { throw new Xunit.Sdk.XunitException($"not JSON ({(int)response.StatusCode}): {text}"); }
    }

    /// <summary>The job's Server-Sent Events until the stream ends (a terminal state): (event type, job JSON).</summary>
    public static async Task<List<(string Type, JsonElement Job)>> Events(HttpClient http, string id, string? apiKey = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, $"/v1/jobs/{id}/events");
        if (apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        using var limit = new CancellationTokenSource(StreamLimit);   // a job that never ends fails the test instead of hanging it
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, limit.Token);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(limit.Token));
        var events = new List<(string, JsonElement)>();
        string? type = null;
        while (await reader.ReadLineAsync(limit.Token) is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) type = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal)) events.Add((type!, JsonDocument.Parse(line[6..]).RootElement.Clone()));
        }
        return events;
    }

    /// <summary>Follows the job's events until one of <paramref name="type"/> arrives (the stream is then left).</summary>
    public static async Task UntilEvent(HttpClient http, string id, string type)
    {
        using var limit = new CancellationTokenSource(StreamLimit);
        using var response = await http.GetAsync($"/v1/jobs/{id}/events", HttpCompletionOption.ResponseHeadersRead, limit.Token);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(limit.Token));
        while (await reader.ReadLineAsync(limit.Token) is { } line)
            if (line == "event: " + type) return;
        throw new Xunit.Sdk.XunitException($"job {id} ended without a '{type}' event");
    }

    /// <summary>Waits (by following its events) until the job is terminal; returns its final JSON.</summary>
    public static async Task<JsonElement> Finished(HttpClient http, string id, string? apiKey = null)
    {
        await Events(http, id, apiKey);
        var (status, body) = await Send(http, HttpMethod.Get, $"/v1/jobs/{id}", apiKey: apiKey);
        Assert.Equal(200, status);
        return body;
    }
}
