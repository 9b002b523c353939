using System.Net;
using System.Text.Json;
using InferenceServer.Pipeline.Images;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Http;

public sealed class HttpImagesApiTests(HttpServerFixture fixture) : IClassFixture<HttpServerFixture>
{
    readonly HttpClient http = fixture.Http;
    static readonly ImageCodec Codec = new();

    [Fact]
    public async Task Generations_b64_json_returns_images_of_the_snapped_size_with_extras()
    {
        var (response, body) = await PostJson(http, "v1/images/generations",
            new { prompt = "a red fox", size = "100x70", seed = 11, steps = 2, response_format = "b64_json", quality = "hd", style = "vivid", user = "u1", unknown_field = new { x = 1 } },
            r => r.Headers.Add("X-Request-Id", "req-abc-1"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("req-abc-1", Assert.Single(response.Headers.GetValues("X-Request-Id")));
        Assert.Equal("96x64", body.GetProperty("size").GetString());   // 100x70 snapped to multiples of 16
        Assert.Equal("png", body.GetProperty("output_format").GetString());
        Assert.True(body.GetProperty("created").GetInt64() > 1_700_000_000);
        var item = Assert.Single(body.GetProperty("data").EnumerateArray().ToList());
        Assert.Equal(11, item.GetProperty("seed").GetInt64());
        Assert.Equal(JsonValueKind.Null, item.GetProperty("revised_prompt").ValueKind);
        var image = Codec.Decode(item.GetProperty("b64_json").GetBytesFromBase64());
        Assert.Equal((96, 64), (image.Width, image.Height));
        var timings = body.GetProperty("timings");
        foreach (var stage in new[] { "queue", "text_encode", "total" })
            Assert.True(timings.GetProperty(stage).GetDouble() >= 0, stage);
        Assert.True(timings.GetProperty("total").GetDouble() > 0);
        Assert.Equal(6 * 4, body.GetProperty("usage").GetProperty("output_tokens").GetInt64());
        Assert.Equal("tiny", body.GetProperty("model").GetString());
        Assert.Equal("req-abc-1", body.GetProperty("request_id").GetString());
    }

    [Fact]
    public async Task N_3_gives_three_images_with_consecutive_seeds()
    {
        var (response, body) = await PostJson(http, "v1/images/generations",
            new { prompt = "three cats", n = 3, size = "64x64", seed = 41, steps = 1, response_format = "b64_json" });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var data = body.GetProperty("data").EnumerateArray().ToList();
        Assert.Equal([41L, 42L, 43L], data.Select(d => d.GetProperty("seed").GetInt64()));
        var images = data.Select(d => d.GetProperty("b64_json").GetString()).ToList();
        Assert.Equal(3, images.Distinct().Count());   // different seeds, different images
        Assert.All(images, b64 => Assert.Equal(64, Codec.Decode(Convert.FromBase64String(b64!)).Width));
    }

    [Fact]
    public async Task Url_response_is_absolute_and_served_with_its_content_type()
    {
        var (response, body) = await PostJson(http, "v1/images/generations",
            new { prompt = "a lighthouse", size = "112x70", steps = 1, seed = 3, output_format = "jpeg", output_compression = 80 });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("112x64", body.GetProperty("size").GetString());   // 70 snapped to 64
        Assert.Equal("jpeg", body.GetProperty("output_format").GetString());
        var url = new Uri(Assert.Single(body.GetProperty("data").EnumerateArray().ToList()).GetProperty("url").GetString()!);
        Assert.True(url.IsAbsoluteUri);
        Assert.Equal(fixture.Server.HttpPort, url.Port);
        Assert.Matches("^/v1/images/files/[0-9a-f]{32}\\.jpg$", url.AbsolutePath);
        using var file = await http.GetAsync(url);
        Assert.Equal(HttpStatusCode.OK, file.StatusCode);
        Assert.Equal("image/jpeg", file.Content.Headers.ContentType!.MediaType);
        var image = Codec.Decode(await file.Content.ReadAsByteArrayAsync());
        Assert.Equal((112, 64), (image.Width, image.Height));
        // Regression (outside probe): any extension was served, a JPEG as "x.png" labelled by the url, not the bytes.
        string id = url.AbsolutePath["/v1/images/files/".Length..^".jpg".Length];
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync($"v1/images/files/{id}.jpeg")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync($"v1/images/files/{id}")).StatusCode);
        foreach (var other in new[] { ".png", ".webp", ".txt" })
        {
            using var wrong = await http.GetAsync($"v1/images/files/{id}{other}");
            AssertError(wrong, await Body(wrong), 404, "id");
        }

        var (missing, error) = (await http.GetAsync("v1/images/files/0123456789abcdef0123456789abcdef"), default(JsonElement));
        error = await Body(missing);
        AssertError(missing, error, 404, "id");
    }

    [Fact]
    public async Task Edits_multipart_with_two_references_and_json_with_a_data_url()
    {
        using var form = Form([("image[]", Png(80, 48, 1)), ("image[]", Png(64, 64, 2))],
            ("prompt", "make it blue"), ("size", "64x96"), ("seed", "5"), ("steps", "2"), ("response_format", "b64_json"), ("output_format", "webp"));
        var (response, body) = await PostJson(http, "v1/images/edits", form);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var item = Assert.Single(body.GetProperty("data").EnumerateArray().ToList());
        var bytes = item.GetProperty("b64_json").GetBytesFromBase64();
        Assert.Equal(ImageFormat.Webp, Codec.ReadHeader(bytes).Format);
        var image = Codec.Decode(bytes);
        Assert.Equal((64, 96), (image.Width, image.Height));

        // A text part named image carrying a data: URL counts as a reference too.
        using var textForm = Form([], ("prompt", "x"), ("size", "64x64"), ("steps", "1"), ("response_format", "b64_json"),
            ("image", "data:image/png;base64," + Convert.ToBase64String(Png(64, 64))));
        (response, body) = await PostJson(http, "v1/images/edits", textForm);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);

        // Seedream's JSON form: image as a data: URL, or base64, or an array of them.
        (response, body) = await PostJson(http, "v1/images/edits", new
        {
            prompt = "make it blue", size = "64x64", steps = 1, response_format = "b64_json",
            image = "data:image/png;base64," + Convert.ToBase64String(Png(64, 64)),
        });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        (response, body) = await PostJson(http, "v1/images/generations", new
        {
            prompt = "make it blue", size = "64x64", steps = 1, response_format = "b64_json",
            image = new[] { Convert.ToBase64String(Png(64, 64)), Convert.ToBase64String(Png(48, 48)) },
        });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Single(body.GetProperty("data").EnumerateArray().ToList());
    }

    [Fact]
    public async Task Models_lists_the_served_model_in_openai_shape()
    {
        using var response = await http.GetAsync("v1/models");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = await Body(response);
        Assert.Equal("list", body.GetProperty("object").GetString());
        var model = Assert.Single(body.GetProperty("data").EnumerateArray().ToList());
        Assert.Equal("tiny", model.GetProperty("id").GetString());
        Assert.Equal("model", model.GetProperty("object").GetString());
        Assert.True(model.GetProperty("created").GetInt64() > 0);
        Assert.False(string.IsNullOrEmpty(model.GetProperty("owned_by").GetString()));
        using var one = await http.GetAsync("v1/models/tiny");
        Assert.Equal(HttpStatusCode.OK, one.StatusCode);
        using var none = await http.GetAsync("v1/models/nope");
        AssertError(none, await Body(none), 404, "model");
    }

    [Fact]
    public async Task A_request_id_is_made_when_the_client_sends_none()
    {
        using var response = await http.GetAsync("v1/models");
        string id = Assert.Single(response.Headers.GetValues("X-Request-Id"));
        Assert.Matches("^[0-9a-f]{32}$", id);
    }

    [Fact]
    public async Task A_tiny_request_timeout_is_504_with_an_error_body()
    {
        var (response, body) = await PostJson(http, "v1/images/generations",
            new { prompt = "slow", size = "512x512", steps = 100, response_format = "b64_json" },
            r => r.Headers.Add("X-Request-Timeout", "0.05"));
        string message = AssertError(response, body, 504, null);
        Assert.Contains("deadline", message);
        Assert.Equal("timeout", body.GetProperty("error").GetProperty("code").GetString());
        (response, body) = await PostJson(http, "v1/images/generations", new { prompt = "x" }, r => r.Headers.Add("X-Request-Timeout", "soon"));
        AssertError(response, body, 400, "X-Request-Timeout");
        (response, body) = await PostJson(http, "v1/images/generations", new { prompt = "x" }, r => r.Headers.Add("X-Request-Timeout", "1e12"));
        AssertError(response, body, 400, "X-Request-Timeout");
        await AssertReady(http);
    }

    [Fact]
    public async Task A_client_that_disconnects_cancels_its_job()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(400));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            http.PostAsync("v1/images/generations", Json(new { prompt = "long", size = "512x512", steps = 100 }), cts.Token));
        // The engine drops the job between steps: the server answers the next request promptly and counts a 499.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        string metrics;
        while (!(metrics = await http.GetStringAsync("metrics")).Contains("code=\"499\"") && DateTime.UtcNow < deadline) await Task.Delay(100);
        Assert.Contains("inference_requests_total{origin=\"http\",code=\"499\"}", metrics);
        await AssertReady(http);
    }

    public static TheoryData<string, int, string?> MalformedCases => new()
    {
        { "corrupt image", 400, "image" },
        { "image bomb", 400, "image" },
        { "huge size", 400, "size" },
        { "n=0", 400, "n" },
        { "n=1000", 400, "n" },
        { "n as a string", 400, "n" },
        { "11 references", 400, "image" },
        { "empty prompt", 400, "prompt" },
        { "missing prompt", 400, "prompt" },
        { "wrong content type", 400, "Content-Type" },
        { "bad JSON", 400, null },
        { "JSON array body", 400, null },
        { "malformed multipart", 400, null },
        { "unknown model", 404, "model" },
        { "bad output_format", 400, "output_format" },
        { "output_compression 101", 400, "output_compression" },
        { "bad response_format", 400, "response_format" },
        { "sequential auto", 400, "sequential_image_generation" },
        { "edit without image", 400, "image" },
        { "image url", 400, "image" },
        { "seed too large", 400, "seed" },
        { "negative seed", 400, "seed" },
        { "steps 0", 400, "steps" },
        { "size as a number", 400, "size" },
        { "bad base64 text part", 400, "image" },
        { "multipart without boundary", 400, null },
    };

    [Theory]
    [MemberData(nameof(MalformedCases))]
    public async Task Malformed_input_is_answered_with_status_and_param(string name, int status, string? param)
    {
        HttpContent content = name switch
        {
            "corrupt image" => Form([("image", Png(64, 64)[..200])], ("prompt", "x"), ("size", "64x64")),
            "image bomb" => Form([("image", PngBomb(100_000))], ("prompt", "x"), ("size", "64x64")),
            "huge size" => Json(new { prompt = "x", size = "100000x100000" }),
            "n=0" => Json(new { prompt = "x", n = 0 }),
            "n=1000" => Json(new { prompt = "x", n = 1000 }),
            "n as a string" => Json(new { prompt = "x", n = "two" }),
            "11 references" => Form(Enumerable.Range(0, 11).Select(i => ("image[]", Png(16, 16, i))), ("prompt", "x")),
            "empty prompt" => Json(new { prompt = "", size = "64x64" }),
            "missing prompt" => Json(new { size = "64x64" }),
            "wrong content type" => new StringContent("prompt=x", System.Text.Encoding.UTF8, "text/plain"),
            "bad JSON" => new StringContent("{\"prompt\": \"x\",", System.Text.Encoding.UTF8, "application/json"),
            "JSON array body" => new StringContent("[1, 2]", System.Text.Encoding.UTF8, "application/json"),
            "malformed multipart" => Multipart("--zzz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--zzz"),
            "unknown model" => Json(new { prompt = "x", model = "dall-e-3" }),
            "bad output_format" => Json(new { prompt = "x", output_format = "gif" }),
            "output_compression 101" => Json(new { prompt = "x", output_compression = 101 }),
            "bad response_format" => Json(new { prompt = "x", response_format = "file" }),
            "sequential auto" => Json(new { prompt = "x", sequential_image_generation = "auto" }),
            "edit without image" => Form([], ("prompt", "x")),
            "image url" => Json(new { prompt = "x", image = "https://example.com/a.png" }),
            "seed too large" => Json(new { prompt = "x", seed = long.MaxValue }),
            "negative seed" => Json(new { prompt = "x", seed = -5 }),
            "steps 0" => Json(new { prompt = "x", steps = 0 }),
            "size as a number" => Json(new { prompt = "x", size = 1024 }),
            "bad base64 text part" => Form([], ("prompt", "x"), ("image", "not base64!")),
            "multipart without boundary" => Multipart("--zzz\r\n", "multipart/form-data"),
            _ => throw new ArgumentOutOfRangeException(nameof(name)),
        };
        string path = content is MultipartFormDataContent || name is "edit without image" or "malformed multipart" or "multipart without boundary" ? "v1/images/edits" : "v1/images/generations";
        var (response, body) = await PostJson(http, path, content);
        AssertError(response, body, status, param);
        await AssertReady(http);
    }

    static ByteArrayContent Multipart(string raw, string contentType = "multipart/form-data; boundary=zzz")
    {
        var content = new ByteArrayContent(System.Text.Encoding.ASCII.GetBytes(raw));
        content.Headers.TryAddWithoutValidation("Content-Type", contentType);
        return content;
    }
}
