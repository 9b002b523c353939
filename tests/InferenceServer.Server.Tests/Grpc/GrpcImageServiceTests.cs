using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Server.Engine;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Grpc;

/// <summary>inference.v1.ImageService over a real channel to a real server (tiny random model), shared by the tests of this class.</summary>
public sealed class GrpcImageServiceTests(GrpcServerFixture fixture, ITestOutputHelper output) : IClassFixture<GrpcServerFixture>
{
    [Fact]
    public async Task Generate_returns_n_images_at_the_requested_size_with_seeds_s_and_s_plus_1()
    {
        var r = await fixture.Client.GenerateAsync(new GenerateRequest
        {
            Prompt = "a red fox", Width = 96, Height = 64, N = 2, Seed = 11, RequestId = "gen-1",
        });
        Assert.Equal(2, r.Images.Count);
        Assert.Equal([11L, 12L], r.Images.Select(i => i.Seed));
        foreach (var image in r.Images)
        {
            Assert.Equal("image/png", image.MimeType);
            Assert.Equal((96u, 64u), (image.Width, image.Height));
            Assert.Equal((96, 64), TestImages.Size(image.Data));
        }
        Assert.NotEqual(r.Images[0].Data, r.Images[1].Data);
        Assert.Equal(("gen-1", "tiny", 4u), (r.RequestId, r.Model, r.Steps));
        Assert.True(r.Timings.TotalMs > 0);
        Assert.Contains("queue", r.Timings.StagesMs.Keys);
        output.WriteLine($"total {r.Timings.TotalMs:0} ms; stages: {string.Join(", ", r.Timings.StagesMs.Select(s => $"{s.Key}={s.Value:0.#}"))}");
    }

    [Fact]
    public async Task Generate_with_reference_images_edits_at_the_requested_size_and_format()
    {
        var request = new GenerateRequest { Prompt = "make it blue", Width = 64, Height = 80, Seed = 3, OutputFormat = OutputFormat.Jpeg, OutputCompression = 80 };
        request.ReferenceImages.Add(TestImages.Input(TestImages.Png(80, 48)));
        request.ReferenceImages.Add(TestImages.Input(TestImages.Png(64, 64)));
        var r = await fixture.Client.GenerateAsync(request);
        var image = Assert.Single(r.Images);
        Assert.Equal("image/jpeg", image.MimeType);
        Assert.Equal((0xFF, 0xD8), (image.Data[0], image.Data[1]));
        Assert.Equal((64, 80), TestImages.Size(image.Data));
        Assert.False(string.IsNullOrEmpty(r.RequestId));   // made by the server when the client sends none
    }

    [Fact]
    public async Task Stream_sends_queued_then_progress_1_to_N_then_the_result()
    {
        var events = new List<GenerateEvent>();
        await foreach (var e in fixture.Client.GenerateStreamAsync(new GenerateRequest { Prompt = "stream", Width = 64, Height = 64, Steps = 3, RequestId = "stream-1" }))
            events.Add(e);
        Assert.Equal(GenerateEvent.EventOneofCase.Queued, events[0].EventCase);
        var progress = events.Where(e => e.EventCase == GenerateEvent.EventOneofCase.Progress).Select(e => e.Progress).ToList();
        Assert.Equal([1u, 2u, 3u], progress.Select(p => p.Step));
        Assert.All(progress, p => Assert.Equal(3u, p.TotalSteps));
        Assert.All(progress, p => Assert.True(p.Preview.IsEmpty));
        Assert.Equal(GenerateEvent.EventOneofCase.Result, events[^1].EventCase);
        Assert.Equal(5, events.Count);
        Assert.Equal((64, 64), TestImages.Size(Assert.Single(events[^1].Result.Images).Data));
        Assert.All(events, e => Assert.Equal("stream-1", e.RequestId));
    }

    // Passes on grpc + batch once ImageScheduler reports BatchProgress.Step (0-based there) as Step + 1 (checked on a scratch merge).
    [Fact]
    public async Task Stream_with_preview_every_1_sends_a_decodable_jpeg_at_each_step()
    {
        var previews = new List<ProgressEvent>();
        var result = await fixture.Client.GenerateAsync(new GenerateRequest { Prompt = "preview", Width = 128, Height = 64, Steps = 2, PreviewEvery = 1 },
            new SyncProgress<ProgressEvent>(previews.Add));
        Assert.Single(result.Images);
        Assert.Equal([1u, 2u], previews.Select(p => p.Step));
        foreach (var p in previews)
        {
            Assert.Equal((0xFF, 0xD8), (p.Preview[0], p.Preview[1]));
            var (w, h) = TestImages.Size(p.Preview);
            Assert.Equal(2.0, (double)w / h, 1);
        }
    }

    [Fact]
    public async Task ListModels_describes_the_tiny_model()
    {
        var model = Assert.Single(await fixture.Client.ListModelsAsync());
        Assert.Equal(("tiny", "flux2", 4u, 10u), (model.Name, model.Family, model.DefaultSteps, model.MaxReferences));
        Assert.True(model.Ready);
        Assert.True(model.IsDefault);
        Assert.False(string.IsNullOrEmpty(model.Device));
    }

    [Fact]
    public async Task Health_is_serving_when_ready_and_reflection_lists_the_image_service()
    {
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await fixture.Client.CheckHealthAsync());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, await fixture.Client.CheckHealthAsync("inference.v1.ImageService"));

        using var channel = global::Grpc.Net.Client.GrpcChannel.ForAddress(fixture.Server.GrpcAddress);
        using var call = new ServerReflection.ServerReflectionClient(channel).ServerReflectionInfo();
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        var services = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToList();
        Assert.Contains("inference.v1.ImageService", services);
        Assert.Contains("grpc.health.v1.Health", services);
    }

    [Fact]
    public async Task A_deadline_mid_denoise_answers_deadline_exceeded_and_the_server_serves_the_next_request()
    {
        var request = new GenerateRequest { Prompt = "slow", Width = 512, Height = 512, Steps = 100, RequestId = "deadline-1" };
        var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.GenerateAsync(request, timeout: TimeSpan.FromMilliseconds(600)));
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);

        var trace = fixture.Recorder.Jobs["deadline-1"];
        await trace.Done.Task.WaitAsync(TimeSpan.FromMinutes(1));
        output.WriteLine($"server: step {trace.StepAtCancel} at the deadline, last step {trace.LastStep} of 100; {trace.Error?.Message}");
        Assert.InRange(trace.LastStep, 0, 99);
        // Whichever fires first stops the job: the job's own timeout (DeadlineExceeded) or the call's token at the deadline (Cancelled).
        Assert.Contains(Assert.IsType<ServiceException>(trace.Error).Kind, new[] { ErrorKind.DeadlineExceeded, ErrorKind.Cancelled });
        if (trace.StepAtCancel >= 0)
            Assert.True(trace.LastStep <= trace.StepAtCancel + 1, $"ran {trace.LastStep - trace.StepAtCancel} steps after the call's token fired");

        var next = await fixture.Client.GenerateAsync(new GenerateRequest { Prompt = "after", Width = 64, Height = 64, Steps = 2 });
        Assert.Single(next.Images);
    }

    [Fact]
    public async Task Cancelling_a_stream_stops_the_job_within_one_step()
    {
        using var cts = new CancellationTokenSource();
        var request = new GenerateRequest { Prompt = "cancel me", Width = 256, Height = 256, Steps = 40, RequestId = "cancel-1" };
        uint seen = 0;
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            await foreach (var ev in fixture.Client.GenerateStreamAsync(request, cancellationToken: cts.Token))
                if (ev.EventCase == GenerateEvent.EventOneofCase.Progress && (seen = ev.Progress.Step) == 2) cts.Cancel();
        });
        Assert.Equal(StatusCode.Cancelled, e.StatusCode);

        var trace = fixture.Recorder.Jobs["cancel-1"];
        await trace.Done.Task.WaitAsync(TimeSpan.FromMinutes(1));
        output.WriteLine($"client saw step {seen}; server: step {trace.StepAtCancel} at cancel, last step {trace.LastStep} of 40");
        Assert.True(trace.StepAtCancel >= 2, "the cancel reached the server");
        Assert.True(trace.LastStep <= trace.StepAtCancel + 1, $"ran {trace.LastStep - trace.StepAtCancel} steps after the cancel");
        Assert.Equal(ErrorKind.Cancelled, Assert.IsType<ServiceException>(trace.Error).Kind);
    }

    [Fact]
    public async Task A_client_disconnecting_mid_stream_stops_the_job_within_one_step()
    {
        var client = new InferenceClient(fixture.Server.GrpcAddress);
        var request = new GenerateRequest { Prompt = "hang up", Width = 256, Height = 256, Steps = 40, RequestId = "disconnect-1" };
        await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await foreach (var ev in client.GenerateStreamAsync(request))
                if (ev.EventCase == GenerateEvent.EventOneofCase.Progress && ev.Progress.Step == 2) client.Dispose();   // closes the connection
        });

        var trace = fixture.Recorder.Jobs["disconnect-1"];
        await trace.Done.Task.WaitAsync(TimeSpan.FromMinutes(1));
        output.WriteLine($"server: step {trace.StepAtCancel} at disconnect, last step {trace.LastStep} of 40");
        Assert.True(trace.StepAtCancel >= 2, "the disconnect reached the server");
        Assert.True(trace.LastStep <= trace.StepAtCancel + 1, $"ran {trace.LastStep - trace.StepAtCancel} steps after the disconnect");
        Assert.Equal(ErrorKind.Cancelled, Assert.IsType<ServiceException>(trace.Error).Kind);
    }

    public static TheoryData<string, string> BadRequests => new()
    {
        { "n=0", "n" }, { "n=1000", "n" }, { "empty prompt", "prompt" }, { "11 references", "reference_images" },
        { "corrupt image", "reference_images" }, { "image bomb", "reference_images" }, { "huge width", "width" },
        { "width without height", "height" }, { "steps=1000", "steps" }, { "unknown model", "model" },
        { "request_id with CR", "request_id" }, { "non-ASCII request_id", "request_id" },
        { "negative seed", "seed" }, { "seed over 2^53", "seed" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task Bad_fields_are_answered_with_the_status_and_the_field(string @case, string field)
    {
        var r = new GenerateRequest { Prompt = "bad", Width = 64, Height = 64, Steps = 2 };
        switch (@case)
        {
            case "n=0": r.N = 0; break;
            case "n=1000": r.N = 1000; break;
            case "empty prompt": r.Prompt = ""; break;
            case "11 references": for (int i = 0; i < 11; i++) r.ReferenceImages.Add(TestImages.Input(TestImages.Png(32, 32))); break;
            case "corrupt image": r.ReferenceImages.Add(TestImages.Input(TestImages.Png(64, 64)[..100])); break;
            case "image bomb": r.ReferenceImages.Add(TestImages.Input(TestImages.Bomb(60_000))); break;
            case "huge width": r.Width = 100_000; break;
            case "width without height": r.Height = 0; break;
            case "steps=1000": r.Steps = 1000; break;
            case "unknown model": r.Model = "nope"; break;
            // Regression (outside probe): these ran the whole job, then failed the reply with INTERNAL (trailer rejected).
            case "request_id with CR": r.RequestId = "evil\r\nINFO forged log line"; break;
            case "non-ASCII request_id": r.RequestId = "réquest-1"; break;
            // Regression (outside probe): gRPC took any int64 and wrapped seed + i; HTTP refused outside [-1, 2^53]. One rule now.
            case "negative seed": r.Seed = -2; break;
            case "seed over 2^53": r.Seed = (1L << 53) + 1; break;
        }
        var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.GenerateAsync(r));
        output.WriteLine($"{@case}: {e.StatusCode} [{TestImages.Trailer(e, "field")}] {e.Status.Detail}");
        Assert.Equal(@case == "unknown model" ? StatusCode.NotFound : StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal(field, TestImages.Trailer(e, "field"));
        Assert.StartsWith(field, e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Seed_minus_one_is_a_random_seed_as_on_http()
    {
        var r = await fixture.Client.GenerateAsync(new GenerateRequest { Prompt = "random seed", Width = 64, Height = 64, Steps = 1, Seed = -1 });
        Assert.InRange(r.Images[0].Seed, 0, 1L << 53);
    }

    /// <summary>Reports on the caller's thread (<see cref="Progress{T}"/> posts to the thread pool, so the list could lag).</summary>
    sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
