using InferenceServer.LoadGen;
using InferenceServer.Pipeline.Images;

namespace InferenceServer.Tests.Serving;

public sealed class LoadGenTests
{
    [Fact]
    public void Percentiles_are_nearest_rank()
    {
        var p = Percentiles.Of(Enumerable.Range(1, 100).Select(i => (double)i).ToList());
        Assert.Equal((50.5, 50.0, 95.0, 99.0, 1.0, 100.0), (p.Mean, p.P50, p.P95, p.P99, p.Min, p.Max));
        Assert.Equal(0, Percentiles.Of([]).P99);
        Assert.Equal(7, Percentiles.Of([7]).P99);
    }

    [Fact]
    public void Size_mixes_parse_with_weights_and_refuse_nonsense()
    {
        var w = new Workload(Workload.ParseSizes("64x64:3, 128x96"), 2, 1, 4, 0);
        Assert.Equal([(64, 64, 3.0), (128, 96, 1.0)], w.Sizes);
        var random = new Random(1);
        int small = Enumerable.Range(0, 4000).Count(_ => w.PickSize(random) == (64, 64));
        Assert.InRange(small, 2800, 3200);
        Assert.Throws<ArgumentException>(() => Workload.ParseSizes("64"));
        Assert.Throws<ArgumentException>(() => Workload.ParseSizes("64x64:-1"));
    }

    [Fact]
    public async Task Closed_and_open_loops_drive_a_real_server_and_the_plot_is_a_png()
    {
        await using var server = await RunningServer.StartAsync();
        var w = new Workload(Workload.ParseSizes("64x64:2,96x64"), 2, 1, 3, 10);
        var closed = await Runner.ClosedAsync(server.GrpcAddress.ToString(), null, w, 4, TimeSpan.Zero, requests: 12, "test");
        Assert.Equal((12, 12), (closed.Sent, closed.Ok));
        Assert.Empty(closed.Errors);
        Assert.True(closed.Latency.P50 > 0 && closed.Latency.P99 >= closed.Latency.P50 && closed.Throughput > 0);
        Assert.True(closed.ServerTotal.P50 > 0 && closed.ServerTotal.P50 <= closed.Latency.Max);
        var open = await Runner.OpenAsync(server.GrpcAddress.ToString(), null, w, 20, TimeSpan.FromSeconds(1), "test");
        Assert.Equal(open.Sent, open.Ok + open.Errors.Values.Sum());
        Assert.True(open.Sent > 0);

        string png = Path.Combine(Path.GetTempPath(), $"loadgen-{Guid.NewGuid():N}.png");
        Plot.Png([closed, open with { Label = "open" }], png);
        var image = new ImageCodec().Decode(File.ReadAllBytes(png));
        Assert.True(image.Width > 500 && image.Height > 500);
        File.Delete(png);
    }
}
