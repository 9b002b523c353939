using Grpc.Core;
using Grpc.Health.V1;
using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Tests.Serving;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Grpc;

/// <summary>gRPC behaviour that depends on server options (API keys, message limits, queue size) or its state (draining): a server each.</summary>
public sealed class GrpcServerOptionsTests(ITestOutputHelper output)
{
    static GenerateRequest Small(string prompt) => new() { Prompt = prompt, Width = 64, Height = 64, Steps = 1 };

    /// <summary>Posts one raw gRPC frame (flag 0, big-endian length, <paramref name="message"/>) and returns the status headers of the answer.</summary>
    static async Task<(string? Status, string? Message, string? Field)> RawCall(RunningServer server, string method, byte[] message, int? claimedLength = null, string? key = null)
    {
        using var h2 = new HttpClient { BaseAddress = server.GrpcAddress };
        var frame = new byte[5 + message.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), (uint)(claimedLength ?? message.Length));
        message.CopyTo(frame, 5);
        using var request = new HttpRequestMessage(HttpMethod.Post, $"inference.v1.ImageService/{method}")
        {
            Content = new ByteArrayContent(frame), Version = System.Net.HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/grpc");
        request.Headers.TryAddWithoutValidation("te", "trailers");
        if (key is not null) request.Headers.TryAddWithoutValidation("authorization", $"Bearer {key}");
        using var response = await h2.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        await response.Content.ReadAsByteArrayAsync();
        string? Get(string name) => response.Headers.TryGetValues(name, out var v) ? v.First()
            : response.TrailingHeaders.TryGetValues(name, out v) ? v.First() : null;
        return (Get("grpc-status"), Uri.UnescapeDataString(Get("grpc-message") ?? ""), Get("field"));
    }

    [Fact]
    public async Task Undecodable_messages_are_INVALID_ARGUMENT_and_counted()
    {
        // Regression (outside probe): these were UNKNOWN with a stack trace in the log, and missing from the metrics.
        await using var server = await RunningServer.StartAsync();
        byte[] invalidUtf8Prompt = [0x12, 0x03, 0xff, 0xfe, 0x80];                 // field 2 (prompt), length 3, not UTF-8
        byte[] garbage = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        foreach (var (method, body) in new[] { ("Generate", invalidUtf8Prompt), ("GenerateStream", garbage), ("ListModels", garbage) })
        {
            var (status, message, _) = await RawCall(server, method, body);
            output.WriteLine($"{method}: {status} {message}");
            Assert.Equal(((int)StatusCode.InvalidArgument).ToString(), status);
            Assert.Contains("not a valid", message);
        }
        using var http = new HttpClient { BaseAddress = server.HttpBase };
        string metrics = await http.GetStringAsync("metrics");
        Assert.Contains(metrics.Split('\n'), l => l.Contains("origin=\"grpc\"") && l.Contains("InvalidArgument") && l.StartsWith("inference_requests_total", StringComparison.Ordinal) && !l.EndsWith(" 0"));
        using var client = new InferenceClient(server.GrpcAddress);
        Assert.NotEmpty(await client.ListModelsAsync());              // the server still answers valid calls
    }

    [Fact]
    public async Task The_key_is_checked_from_the_headers_before_the_message_is_read()
    {
        await using var server = await RunningServer.StartAsync(o => o.ApiKeys = ["k1"]);
        // A frame header that announces 150 MB with no body behind it: refused on the headers alone.
        var (status, _, field) = await RawCall(server, "Generate", [], claimedLength: 150 << 20);
        Assert.Equal(((int)StatusCode.Unauthenticated).ToString(), status);
        Assert.Equal("authorization", field);
        (status, _, _) = await RawCall(server, "Generate", [0x12, 0x03, 0xff, 0xfe, 0x80], key: "k1");
        Assert.Equal(((int)StatusCode.InvalidArgument).ToString(), status);
    }

    [Fact]
    public async Task Api_keys_guard_the_image_service_but_not_health_or_reflection()
    {
        await using var server = await RunningServer.StartAsync(o => o.ApiKeys = ["k1", "k2"]);
        using var anonymous = new InferenceClient(server.GrpcAddress);
        using var wrong = new InferenceClient(server.GrpcAddress, apiKey: "k3");
        using var right = new InferenceClient(server.GrpcAddress, apiKey: "k2");

        var e = await Assert.ThrowsAsync<RpcException>(() => anonymous.GenerateAsync(Small("no key")));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        Assert.Equal("authorization", e.Trailers.GetValue("field"));
        e = await Assert.ThrowsAsync<RpcException>(() => anonymous.ListModelsAsync());
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        e = await Assert.ThrowsAsync<RpcException>(() => wrong.GenerateAsync(Small("wrong key")));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);

        Assert.Single((await right.GenerateAsync(Small("right key"))).Images);
        Assert.Single(await right.ListModelsAsync());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await anonymous.CheckHealthAsync());
    }

    [Fact]
    public async Task An_oversized_request_message_is_resource_exhausted()
    {
        await using var server = await RunningServer.StartAsync(o => o.Limits.MaxRequestBytes = 1 << 20);
        using var client = new InferenceClient(server.GrpcAddress);
        var request = Small("big");
        request.ReferenceImages.Add(TestImages.Input(new byte[2 << 20]));
        var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateAsync(request));
        output.WriteLine($"{e.StatusCode}: {e.Status.Detail}");
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal($"the request message is {request.CalculateSize():N0} bytes; the limit is 1,048,576 bytes (InferenceServer:Limits:MaxRequestBytes)", e.Status.Detail);
        Assert.Single((await client.GenerateAsync(Small("fits"))).Images);   // the connection and server are fine
    }

    [Fact]
    public async Task A_full_queue_is_resource_exhausted_with_retry_after_and_the_client_retries_when_asked()
    {
        await using var server = await RunningServer.StartAsync(o =>
        {
            o.Queue.MaxQueued = 0;                                    // every request finds the queue full
            o.Queue.RetryAfter = TimeSpan.FromMilliseconds(300);
        });
        using var once = new InferenceClient(server.GrpcAddress);
        var e = await Assert.ThrowsAsync<RpcException>(() => once.GenerateAsync(Small("full")));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal("1", e.Trailers.GetValue("retry-after"));
        Assert.Equal("300", e.Trailers.GetValue("grpc-retry-pushback-ms"));

        using var retrying = new InferenceClient(server.GrpcAddress, options: new InferenceClientOptions { EnableRetries = true, MaxAttempts = 3 });
        e = await Assert.ThrowsAsync<RpcException>(() => retrying.GenerateAsync(Small("full again")));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);

        using var http = new HttpClient { BaseAddress = server.HttpBase };
        string metrics = await http.GetStringAsync("metrics");
        var line = metrics.Split('\n').Single(l => l.StartsWith("inference_requests_total{", StringComparison.Ordinal) && l.Contains("ResourceExhausted"));
        output.WriteLine(line);
        Assert.Equal(4, double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));   // 1 + 3 attempts
    }

    [Fact]
    public async Task Draining_turns_health_not_serving_and_refuses_with_unavailable()
    {
        await using var server = await RunningServer.StartAsync();
        using var client = new InferenceClient(server.GrpcAddress);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await client.CheckHealthAsync());
        using var watch = client.Health.Watch(new HealthCheckRequest(), deadline: DateTime.UtcNow.AddMinutes(1));
        Assert.True(await watch.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, watch.ResponseStream.Current.Status);
        server.Scheduler.BeginDrain();
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, await client.CheckHealthAsync());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, await client.CheckHealthAsync("inference.v1.ImageService"));
        var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateAsync(Small("late")));
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.NotNull(e.Trailers.GetValue("retry-after"));
        // Watch's first message is computed fresh; a SERVING stored after it may still be delivered before the change.
        var seen = new List<HealthCheckResponse.Types.ServingStatus>();
        while (await watch.ResponseStream.MoveNext(CancellationToken.None))
        {
            seen.Add(watch.ResponseStream.Current.Status);
            if (watch.ResponseStream.Current.Status != HealthCheckResponse.Types.ServingStatus.Serving) break;
        }
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, seen[^1]);
    }
}
