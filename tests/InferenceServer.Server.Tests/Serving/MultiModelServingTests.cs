using System.Net;
using Grpc.Core;
using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Tests.Http;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Serving;

/// <summary>
/// One server process serving the tiny FLUX.2 and the tiny Z-Image models side by side (<c>--model flux=DIR --model zimage=DIR</c>):
/// both listed over gRPC and HTTP, each reachable by the request's <c>model</c> field on both front ends, and a reference
/// image sent to the text-to-image-only Z-Image refused with INVALID_ARGUMENT / 400 naming the field and the model.
/// </summary>
public sealed class MultiModelServingTests : IAsyncLifetime
{
    RunningServer server = null!;

    public async Task InitializeAsync() =>
        server = await RunningServer.StartAsync(o => { o.Models = [$"flux={TinyModel.Folder}", $"zimage={TinyModel.ZImageFolder}"]; o.ModelName = null; });

    public async Task DisposeAsync() => await server.DisposeAsync();

    [Fact]
    public async Task Both_models_are_listed_and_generate_over_grpc_and_http()
    {
        using var client = new InferenceClient(server.GrpcAddress);
        var models = await client.ListModelsAsync();
        Assert.Equal(["flux", "zimage"], models.Select(m => m.Name));
        Assert.Equal(["flux2", "zimage"], models.Select(m => m.Family));
        Assert.True(models[0].IsDefault);
        Assert.Equal(0u, models[1].MaxReferences);
        Assert.Equal(8u, models[1].DefaultSteps);

        foreach (var name in new[] { "flux", "zimage" })
        {
            var r = await client.GenerateAsync(new GenerateRequest { Model = name, Prompt = "a lighthouse", Width = 64, Height = 96, Steps = 2, Seed = 3 });
            Assert.Equal(name, r.Model);
            var image = Assert.Single(r.Images);
            Assert.Equal((64u, 96u), (image.Width, image.Height));
        }

        using var http = NewHttp(server);
        using var list = await http.GetAsync("v1/models");
        var ids = (await Body(list)).GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()).ToList();
        Assert.Equal(["flux", "zimage"], ids);
        var (response, body) = await PostJson(http, "v1/images/generations", new { model = "zimage", prompt = "a lighthouse", size = "64x64", steps = 2, response_format = "b64_json" });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Single(body.GetProperty("data").EnumerateArray());
    }

    [Fact]
    public async Task A_reference_image_sent_to_zimage_is_invalid_argument_naming_the_model()
    {
        byte[] png = HttpTestKit.Png(64, 64);
        using var client = new InferenceClient(server.GrpcAddress);
        var request = new GenerateRequest { Model = "zimage", Prompt = "make it blue", Width = 64, Height = 64, Steps = 1 };
        request.ReferenceImages.Add(new InputImage { Data = Google.Protobuf.ByteString.CopyFrom(png) });
        var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateAsync(request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("zimage", e.Status.Detail);
        Assert.Contains("text only", e.Status.Detail);
        Assert.Equal("reference_images", e.Trailers.GetValue("field"));   // the gRPC spelling of the field

        // The same edit to the FLUX.2 model is fine.
        request.Model = "flux";
        Assert.Single((await client.GenerateAsync(request)).Images);

        using var http = NewHttp(server);
        var (response, body) = await PostJson(http, "v1/images/edits", new
        {
            model = "zimage", prompt = "make it blue", size = "64x64", steps = 1, image = "data:image/png;base64," + Convert.ToBase64String(png),
        });
        Assert.Contains("text only", AssertError(response, body, 400, "image"));
    }
}
