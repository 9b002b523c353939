using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;

namespace InferenceServer.Tests.Serving;

public sealed class SchedulerTests
{
    static ImageJobRequest Job(string prompt, long seed, string size = "64x64", int n = 1) => new()
    {
        RequestId = $"t-{prompt}-{seed}",
        Generation = new GenerationRequest { Prompt = prompt, Seed = seed, Size = new SizeRequest(size), Count = n, Steps = 2 },
    };

    [Fact]
    public async Task Generates_and_reports_ready_and_the_model()
    {
        await using var server = await RunningServer.StartAsync();
        Assert.True(server.Scheduler.Ready);
        var model = Assert.Single(server.Scheduler.Models);
        Assert.Equal("tiny", model.Name);
        var events = new List<JobEvent>();
        var r = await server.Scheduler.GenerateAsync(Job("a red fox", 7, n: 2), e => { lock (events) events.Add(e); });
        Assert.Equal(2, r.Generation.Images.Count);
        Assert.Equal([7L, 8L], r.Generation.Images.Select(i => i.Seed));
        Assert.IsType<JobEvent.Queued>(events[0]);
        Assert.Contains(events, e => e is JobEvent.Progress { Step: 2, Steps: 2 });
        using var http = new HttpClient { BaseAddress = server.HttpBase };
        Assert.Equal("ready", await http.GetStringAsync("readyz"));
        Assert.Contains("inference_batch_images", await http.GetStringAsync("metrics"));
    }

    [Fact]
    public async Task Bad_fields_are_invalid_argument_naming_the_field()
    {
        await using var server = await RunningServer.StartAsync(o => o.Limits.MaxImages = 4);
        var e = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("x", 1, n: 5)));
        Assert.Equal((ErrorKind.InvalidArgument, "n"), (e.Kind, e.Param));
        e = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("x", 1, size: "10x10")));
        Assert.Equal((ErrorKind.InvalidArgument, "size"), (e.Kind, e.Param));
        e = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job(" ", 1)));
        Assert.Equal((ErrorKind.InvalidArgument, "prompt"), (e.Kind, e.Param));
        e = await Assert.ThrowsAsync<ServiceException>(() => server.Scheduler.GenerateAsync(Job("x", 1) with { Model = "nope" }));
        Assert.Equal((ErrorKind.NotFound, "model"), (e.Kind, e.Param));
    }

    [Theory]
    [InlineData("int8", "int8")]
    [InlineData("fp8", "fp8 weights")]
    public async Task Serves_8_bit_weights_and_reports_them_in_the_model_list(string dtype, string format)
    {
        await using var server = await RunningServer.StartAsync(o => o.DType = dtype);
        Assert.Contains(format, Assert.Single(server.Scheduler.Models).LoadedDType, StringComparison.OrdinalIgnoreCase);
        var r = await server.Scheduler.GenerateAsync(Job("a quantized fox", 3));
        Assert.Single(r.Generation.Images);
    }
}
