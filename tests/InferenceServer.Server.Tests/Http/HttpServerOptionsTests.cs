using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using InferenceServer.Tests.Serving;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Http;

/// <summary>HTTP behaviour under non-default options: API keys, a small body limit, a short url expiry.</summary>
public sealed class HttpServerOptionsTests
{
    [Fact]
    public async Task Api_key_is_required_on_api_routes_but_not_on_health_and_metrics()
    {
        await using var server = await RunningServer.StartAsync(o => o.ApiKeys = ["k-123", "k-456"]);
        using var http = NewHttp(server);
        object body = new { prompt = "x", size = "64x64", steps = 1, response_format = "b64_json" };

        var (response, error) = await PostJson(http, "v1/images/generations", body);
        AssertError(response, error, 401, null);
        Assert.Equal("invalid_api_key", error.GetProperty("error").GetProperty("code").GetString());
        Assert.Contains("Bearer", response.Headers.WwwAuthenticate.ToString());
        (response, error) = await PostJson(http, "v1/images/generations", body, r => r.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "wrong"));
        AssertError(response, error, 401, null);
        using var models = await http.GetAsync("v1/models");
        Assert.Equal(HttpStatusCode.Unauthorized, models.StatusCode);

        (response, _) = await PostJson(http, "v1/images/generations", body, r => r.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "k-456"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        await AssertReady(http);
        Assert.Equal("ok", await http.GetStringAsync("healthz"));
        Assert.Contains("inference_requests_total", await http.GetStringAsync("metrics"));

        // gRPC calls are left to the gRPC interceptor: the HTTP middleware does not answer them with 401.
        using var h2 = new HttpClient { BaseAddress = server.GrpcAddress, DefaultRequestVersion = HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var grpc = new ByteArrayContent([0, 0, 0, 0, 0]);
        grpc.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        using var grpcResponse = await h2.PostAsync("inference.v1.ImageService/ListModels", grpc);
        Assert.NotEqual(HttpStatusCode.Unauthorized, grpcResponse.StatusCode);
        Assert.False(grpcResponse.Headers.Contains("X-Request-Id"));
    }

    [Fact]
    public async Task A_grpc_content_type_does_not_skip_the_key_check_and_each_port_serves_only_its_api()
    {
        // Regression (outside probe): 'content-type: application/grpc' made the HTTP middleware skip the API-key check,
        // so /v1/models and /v1/images/files/{id} answered 200 without a key, on both ports.
        await using var server = await RunningServer.StartAsync(o => o.ApiKeys = ["k-123"]);
        using var http = NewHttp(server);
        foreach (var path in new[] { "v1/models", "v1/images/files/abc", "v1/loras" })
        {
            using var get = new HttpRequestMessage(HttpMethod.Get, path) { Content = new ByteArrayContent([]) };
            get.Content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
            using var response = await http.SendAsync(get);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        }

        using var h2 = new HttpClient { BaseAddress = server.GrpcAddress, DefaultRequestVersion = HttpVersion.Version20,
            DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        foreach (var contentType in new[] { "application/grpc", "application/json" })
        {
            using var get = new HttpRequestMessage(HttpMethod.Get, "v1/models")
            {
                Content = new ByteArrayContent([]), Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            };
            get.Content.Headers.ContentType = new MediaTypeHeaderValue(contentType);
            using var response = await h2.SendAsync(get);
            string text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.NotFound, $"{contentType}: {(int)response.StatusCode} {text} {string.Join(";", response.Headers.Select(h => h.Key + "=" + string.Join(",", h.Value)))}");
            Assert.Contains("gRPC only", text);
        }

        // gRPC methods are not served on the HTTP port (even with a valid key).
        using var grpcOnHttp = new HttpRequestMessage(HttpMethod.Post, "inference.v1.ImageService/ListModels") { Content = new ByteArrayContent([0, 0, 0, 0, 0]) };
        grpcOnHttp.Content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        grpcOnHttp.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "k-123");
        using var refused = await http.SendAsync(grpcOnHttp);
        Assert.Equal(HttpStatusCode.NotFound, refused.StatusCode);
        using var models = new HttpRequestMessage(HttpMethod.Get, "v1/models");
        models.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "k-123");
        Assert.Equal(HttpStatusCode.OK, (await http.SendAsync(models)).StatusCode);
    }

    [Fact]
    public async Task Oversized_body_is_413_for_json_and_multipart()
    {
        await using var server = await RunningServer.StartAsync(o => o.Limits.MaxRequestBytes = 64 << 10);
        using var http = NewHttp(server);
        var (response, body) = await PostJson(http, "v1/images/generations", new { prompt = new string('a', 100_000), size = "64x64" });
        AssertError(response, body, 413, null);
        await AssertReady(http);

        using var fresh = NewHttp(server);   // Kestrel closes a connection whose body it did not read
        var noise = new byte[100_000];
        new Random(1).NextBytes(noise);
        (response, body) = await PostJson(fresh, "v1/images/edits", Form([("image", noise)], ("prompt", "x")));
        AssertError(response, body, 413, null);
        await AssertReady(NewHttp(server));
    }

    [Fact]
    public async Task Expired_url_is_404_in_openai_shape()
    {
        await using var server = await RunningServer.StartAsync(o => o.Files.Expiry = TimeSpan.FromMilliseconds(300));
        using var http = NewHttp(server);
        var (response, body) = await PostJson(http, "v1/images/generations", new { prompt = "x", size = "64x64", steps = 1 });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        string url = body.GetProperty("data")[0].GetProperty("url").GetString()!;
        await Task.Delay(600);
        using var expired = await http.GetAsync(url);
        var error = await Body(expired);
        AssertError(expired, error, 404, "id");
        Assert.Equal(JsonValueKind.String, error.GetProperty("error").GetProperty("message").ValueKind);
    }

    [Fact]
    public async Task Full_queue_is_429_with_retry_after()
    {
        await using var server = await RunningServer.StartAsync(o => { o.Queue.MaxQueued = 0; o.Queue.RetryAfter = TimeSpan.FromSeconds(3); });
        using var http = NewHttp(server);
        var (response, body) = await PostJson(http, "v1/images/generations", new { prompt = "x", size = "64x64" });
        AssertError(response, body, 429, null);
        Assert.Equal(TimeSpan.FromSeconds(3), response.Headers.RetryAfter?.Delta);
        Assert.Contains("inference_errors_total{origin=\"http\",code=\"429\"} 1", await http.GetStringAsync("metrics"));
    }

    [Fact]
    public async Task Url_images_larger_than_the_store_are_413_naming_response_format()
    {
        await using var server = await RunningServer.StartAsync(o => o.Files.MaxBytes = 1000);
        using var http = NewHttp(server);
        var (response, body) = await PostJson(http, "v1/images/generations", new { prompt = "x", size = "64x64", steps = 1, n = 2 });
        AssertError(response, body, 413, "response_format");
        (response, _) = await PostJson(http, "v1/images/generations", new { prompt = "x", size = "64x64", steps = 1, n = 2, response_format = "b64_json" });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    [Fact]
    public async Task Public_base_url_prefixes_returned_urls()
    {
        await using var server = await RunningServer.StartAsync(o => o.Files.PublicBaseUrl = "https://images.example.com/");
        using var http = NewHttp(server);
        var (response, body) = await PostJson(http, "v1/images/generations", new { prompt = "x", size = "64x64", steps = 1 });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.StartsWith("https://images.example.com/v1/images/files/", body.GetProperty("data")[0].GetProperty("url").GetString());
    }
}
