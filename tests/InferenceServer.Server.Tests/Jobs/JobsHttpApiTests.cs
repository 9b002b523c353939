using System.Text.Json;
using InferenceServer.Tests.Http;
using InferenceServer.Tests.Serving;

namespace InferenceServer.Tests.Jobs;

/// <summary>Durable jobs over HTTP on a real server (tiny model, its own SQLite store).</summary>
public sealed class JobsHttpApiTests(HttpServerFixture fixture) : IClassFixture<HttpServerFixture>
{
    readonly HttpClient http = fixture.Http;

    [Fact]
    public async Task A_job_is_queued_runs_with_every_step_as_an_event_and_its_image_is_the_live_requests_image()
    {
        var body = new { prompt = "a lighthouse", size = "64x64", seed = 11, steps = 3, labels = new { shot = "sh010", frame = "0042" }, batch = "http-basic" };
        var (status, job) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", body);
        Assert.Equal(202, status);
        string id = job.GetProperty("id").GetString()!;
        Assert.StartsWith("job_", id);
        Assert.Equal($"/v1/jobs/{id}", new Uri(job.GetProperty("status_url").GetString()!).AbsolutePath);

        var events = await JobsHttp.Events(http, id);
        var types = events.Select(e => e.Type).ToList();
        // Its current state first (queued, or already running), then each step once, in order, then the result.
        int firstProgress = types.IndexOf("progress");
        Assert.True(firstProgress >= 1, string.Join(",", types));
        Assert.Contains(types[0], new[] { "queued", "running" });
        Assert.Equal([1, 2, 3], events.Where(e => e.Type == "progress").Select(e => e.Job.GetProperty("progress").GetProperty("step").GetInt32()));
        Assert.Equal("succeeded", types[^1]);
        Assert.Equal(types.Count - 4, firstProgress);

        var done = events[^1].Job;
        Assert.Equal("succeeded", done.GetProperty("status").GetString());
        Assert.Equal(1, done.GetProperty("attempts").GetInt32());
        Assert.Equal("sh010", done.GetProperty("labels").GetProperty("shot").GetString());
        var image = done.GetProperty("result").GetProperty("images")[0];
        Assert.Equal((11L, 64, "image/png"), (image.GetProperty("seed").GetInt64(), image.GetProperty("width").GetInt32(), image.GetProperty("mime_type").GetString()));
        var bytes = await http.GetByteArrayAsync($"/v1/jobs/{id}/images/0");

        var (_, live) = await HttpTestKit.PostJson(http, "/v1/images/generations", new { prompt = "a lighthouse", size = "64x64", seed = 11, steps = 3, response_format = "b64_json" });
        Assert.Equal(Convert.FromBase64String(live.GetProperty("data")[0].GetProperty("b64_json").GetString()!), bytes);

        var (batchStatus, batch) = await JobsHttp.Send(http, HttpMethod.Get, "/v1/batches/http-basic");
        Assert.Equal((200, 1, 1), (batchStatus, batch.GetProperty("counts").GetProperty("succeeded").GetInt32(), batch.GetProperty("total").GetInt32()));
    }

    [Fact]
    public async Task The_same_idempotency_key_returns_the_first_job_with_200()
    {
        var body = new { prompt = "once", size = "64x64", steps = 1 };
        var (s1, first) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", body, idempotencyKey: "render-0001");
        var (s2, again) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", body, idempotencyKey: "render-0001");
        var (s3, inBody) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", new { prompt = "once", size = "64x64", steps = 1, idempotency_key = "render-0001" });
        Assert.Equal((202, 200, 200), (s1, s2, s3));
        Assert.Equal(first.GetProperty("id").GetString(), again.GetProperty("id").GetString());
        Assert.Equal(first.GetProperty("id").GetString(), inBody.GetProperty("id").GetString());
        await JobsHttp.Finished(http, first.GetProperty("id").GetString()!);
    }

    [Fact]
    public async Task Lists_page_with_an_opaque_cursor_and_filter_by_label_and_status()
    {
        var ids = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            var (_, job) = await JobsHttp.Send(http, HttpMethod.Post, "/v1/jobs", new { prompt = $"frame {i}", size = "64x64", steps = 1, batch = "paged", labels = new { frame = $"{i:D4}" } });
            ids.Add(job.GetProperty("id").GetString()!);
        }
        foreach (var id in ids) await JobsHttp.Finished(http, id);
        var (_, page1) = await JobsHttp.Send(http, HttpMethod.Get, "/v1/jobs?batch=paged&limit=2");
        Assert.True(page1.GetProperty("has_more").GetBoolean());
        string cursor = page1.GetProperty("next_after").GetString()!;
        var (_, page2) = await JobsHttp.Send(http, HttpMethod.Get, $"/v1/jobs?batch=paged&limit=2&after={cursor}");
        Assert.False(page2.GetProperty("has_more").GetBoolean());
        Assert.Equal(ids, page1.GetProperty("data").EnumerateArray().Concat(page2.GetProperty("data").EnumerateArray()).Select(j => j.GetProperty("id").GetString()));
        var (_, labelled) = await JobsHttp.Send(http, HttpMethod.Get, "/v1/jobs?label=frame:0001&status=succeeded");
        Assert.Equal(ids[1], Assert.Single(labelled.GetProperty("data").EnumerateArray()).GetProperty("id").GetString());
    }

    [Theory]
    [InlineData("GET", "/v1/jobs/job_000000000000000000000000", null, 404, "id")]
    [InlineData("GET", "/v1/jobs/job_000000000000000000000000/events", null, 404, "id")]
    [InlineData("POST", "/v1/jobs/job_000000000000000000000000/cancel", null, 404, "id")]
    [InlineData("GET", "/v1/jobs?after=not-a-cursor", null, 400, "after")]
    [InlineData("GET", "/v1/jobs?status=sleeping", null, 400, "status")]
    [InlineData("GET", "/v1/jobs?limit=0", null, 400, "limit")]
    [InlineData("GET", "/v1/batches/no-such-batch", null, 404, "batch")]
    [InlineData("POST", "/v1/jobs", """{"prompt":"x","size":"9999x9999"}""", 400, "size")]
    [InlineData("POST", "/v1/jobs", """{"prompt":""}""", 400, "prompt")]
    [InlineData("POST", "/v1/jobs", """{"prompt":"x","labels":["a"]}""", 400, "labels")]
    [InlineData("POST", "/v1/jobs", """{"prompt":"x","max_attempts":0}""", 400, "max_attempts")]
    [InlineData("POST", "/v1/jobs", """{"prompt":"x","webhook_url":"ftp://example.com/hook"}""", 400, "webhook_url")]
    [InlineData("POST", "/v1/jobs", """{"prompt":"x","model":"nope"}""", 404, "model")]
    public async Task Bad_input_is_answered_with_the_status_and_the_field(string method, string path, string? json, int status, string param)
    {
        using var request = new HttpRequestMessage(new HttpMethod(method), path);
        if (json is not null) request.Content = new StringContent(json, System.Text.Encoding.UTF8, "application/json");
        using var response = await http.SendAsync(request);
        var body = await HttpTestKit.Body(response);
        HttpTestKit.AssertError(response, body, status, param);
    }

    [Fact]
    public async Task An_edit_job_takes_multipart_references_and_labels_like_the_edits_route()
    {
        var form = HttpTestKit.Form([("image", HttpTestKit.Png(80, 48)), ("image[]", HttpTestKit.Png(64, 64, seed: 2))],
            ("prompt", "make it blue"), ("size", "64x80"), ("seed", "9"), ("steps", "2"), ("labels", """{"shot": "sh020"}"""), ("priority", "3"));
        using var response = await http.PostAsync("/v1/jobs", form);
        var job = await HttpTestKit.Body(response);
        Assert.Equal(202, (int)response.StatusCode);
        Assert.Equal(("sh020", 3), (job.GetProperty("labels").GetProperty("shot").GetString(), job.GetProperty("priority").GetInt32()));
        var done = await JobsHttp.Finished(http, job.GetProperty("id").GetString()!);
        var image = Assert.Single(done.GetProperty("result").GetProperty("images").EnumerateArray());
        Assert.Equal((64, 80, 9L), (image.GetProperty("width").GetInt32(), image.GetProperty("height").GetInt32(), image.GetProperty("seed").GetInt64()));

        var bad = HttpTestKit.Form([], ("prompt", "x"), ("labels", "not json"));
        using var refused = await http.PostAsync("/v1/jobs", bad);
        HttpTestKit.AssertError(refused, await HttpTestKit.Body(refused), 400, "labels");
    }
}
