using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Lora;

/// <summary>
/// <c>serve --lora-merge NAME[:SCALE]</c>: the adapter merged into the weights at load gives the image the unmerged
/// per-request adapter gives at that scale (within float rounding), is reported by ListModels and /v1/models, and an
/// adapter that fits no served model (or names no file) stops the start with a message naming it.
/// </summary>
public sealed class LoraMergeTests(ITestOutputHelper output)
{
    static GenerateRequest Request(string? lora = null, double scale = 1)
    {
        var r = new GenerateRequest { Prompt = "a lighthouse at dusk", Width = 64, Height = 64, Steps = 2, Seed = 9 };
        if (lora is not null) r.Loras.Add(new LoraRef { Name = lora, Scale = scale });
        return r;
    }

    static async Task<byte[]> Image(InferenceClient client, GenerateRequest r) => Assert.Single((await client.GenerateAsync(r)).Images).Data.ToByteArray();

    [Fact]
    public async Task A_merged_adapter_gives_the_image_of_the_same_adapter_applied_per_request()
    {
        byte[] merged;
        // Two families served: the FLUX.2 adapter goes into the FLUX.2 model only.
        await using (var server = await RunningServer.StartAsync(o =>
        {
            o.Models = [$"tiny={TinyModel.Folder}", $"zimage={TinyModel.ZImageFolder}"];
            o.ModelName = null;
            o.Lora.Directory = TestLoras.Dir;
            o.Lora.Merge = ["style:0.5"];
        }))
        {
            using var client = new InferenceClient(server.GrpcAddress);
            merged = await Image(client, Request());
            var models = await client.ListModelsAsync();
            Assert.Equal(["style:0.5"], models.Single(m => m.Name == "tiny").MergedLoras);
            Assert.Empty(models.Single(m => m.Name == "zimage").MergedLoras);
            using var http = NewHttp(server);
            var httpModel = (await Body(await http.GetAsync("v1/models"))).GetProperty("data").EnumerateArray().Single(m => m.GetProperty("id").GetString() == "tiny");
            Assert.Equal(["style:0.5"], httpModel.GetProperty("merged_loras").EnumerateArray().Select(m => m.GetString()));
        }

        byte[] adapted, plain;
        await using (var server = await RunningServer.StartAsync(o => o.Lora.Directory = TestLoras.Dir))
        {
            using var client = new InferenceClient(server.GrpcAddress);
            adapted = await Image(client, Request("style", 0.5));
            plain = await Image(client, Request());
        }
        var (max, mean) = TestLoras.PixelDifference(merged, adapted);
        var (baseMax, baseMean) = TestLoras.PixelDifference(merged, plain);
        output.WriteLine($"merged vs per-request adapter: max {max}, mean {mean:F4}; merged vs base: max {baseMax}, mean {baseMean:F3}");
        Assert.True(max <= 2 && mean < 0.05, $"merged vs per-request: max {max}, mean {mean:F4}");   // FP32 weights: W + dW rounded once vs W x + dW x
        Assert.True(baseMean > 20 * Math.Max(mean, 0.01), $"the merge changed little: mean difference to the base {baseMean:F3}");
    }

    [Theory]
    [InlineData("zimage-style", "fits none of the served models", "tiny:")]
    [InlineData("nope:0.5", "--lora-merge", "no nope.safetensors")]
    public async Task An_adapter_that_fits_no_served_model_or_no_file_stops_the_start(string merge, string expected, string alsoExpected)
    {
        var app = RunningServer.Build(o =>
        {
            o.Lora.Directory = TestLoras.Dir;
            o.Lora.Merge = [merge];
        });
        await app.StartAsync();
        try
        {
            var e = await Assert.ThrowsAnyAsync<Exception>(() => app.Services.GetRequiredService<ImageScheduler>().Loaded.WaitAsync(TimeSpan.FromMinutes(2)));
            Assert.Contains(expected, e.Message);
            Assert.Contains(alsoExpected, e.Message);
            Assert.False(app.Services.GetRequiredService<IImageGenerator>().Ready);
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }
}
