using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Tests.Grpc;
using InferenceServer.Tests.Http;
using InferenceServer.Tests.Serving;
using OpenAI;
using OpenAI.Images;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Lora;

/// <summary>One server over the tiny FLUX.2 ("tiny", the default) and tiny Z-Image ("zimage") models with the test adapter folder, and a gRPC and an HTTP client on it.</summary>
public sealed class LoraServerFixture : IAsyncLifetime
{
    public RunningServer Server { get; private set; } = null!;
    public InferenceClient Client { get; private set; } = null!;
    public HttpClient Http { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Server = await RunningServer.StartAsync(o =>
        {
            o.Models = [$"tiny={TinyModel.Folder}", $"zimage={TinyModel.ZImageFolder}"];
            o.ModelName = null;
            o.Lora.Directory = TestLoras.Dir;
        });
        Client = new InferenceClient(Server.GrpcAddress);
        Http = NewHttp(Server);
    }

    public async Task DisposeAsync()
    {
        Client.Dispose();
        Http.Dispose();
        await Server.DisposeAsync();
    }
}

/// <summary>
/// Adapters named per request over a real server: <c>loras</c> on gRPC and HTTP (JSON and multipart) change the image,
/// deterministically, identically on both front ends and for every file layout of one adapter; ListLoras and
/// <c>GET /v1/loras</c> list the folder with the loader's report; bad names, files and counts are INVALID_ARGUMENT / 400
/// naming <c>loras</c>.
/// </summary>
public sealed class LoraServingTests(LoraServerFixture fixture) : IClassFixture<LoraServerFixture>
{
    static GenerateRequest Request(long seed, params (string Name, double? Scale)[] loras)
    {
        var r = new GenerateRequest { Prompt = "a lighthouse at dusk", Width = 64, Height = 64, Steps = 2, Seed = seed };
        foreach (var (name, scale) in loras)
        {
            var l = new LoraRef { Name = name };
            if (scale is { } s) l.Scale = s;
            r.Loras.Add(l);
        }
        return r;
    }

    async Task<byte[]> Image(GenerateRequest r) => Assert.Single((await fixture.Client.GenerateAsync(r)).Images).Data.ToByteArray();

    [Fact]
    public async Task An_adapter_changes_the_image_the_same_way_every_time_and_in_every_file_layout()
    {
        byte[] plain = await Image(Request(7));
        byte[] style = await Image(Request(7, ("style", null)));
        Assert.NotEqual(plain, style);
        Assert.Equal(style, await Image(Request(7, ("style", null))));
        Assert.Equal(style, await Image(Request(7, ("style", 1.0))));                    // unset scale = 1
        Assert.Equal(plain, await Image(Request(7, ("style", 0.0))));                   // scale 0 = the base model, bit for bit
        Assert.Equal(style, await Image(Request(7, ("style-diffusers", null))));       // one adapter written in three layouts
        Assert.Equal(style, await Image(Request(7, ("style-kohya", null))));
        Assert.Equal(style, await Image(Request(7, ("style.safetensors", null))));     // the file name is accepted too
        byte[] half = await Image(Request(7, ("style", 0.5)));
        Assert.NotEqual(style, half);
        Assert.NotEqual(plain, half);
        byte[] both = await Image(Request(7, ("style", null), ("detail", 2.0)));
        Assert.NotEqual(style, both);
        Assert.Equal(both, await Image(Request(7, ("detail", 2.0), ("style", null))));  // order does not matter
    }

    [Fact]
    public async Task ListLoras_and_GET_v1_loras_list_the_folder_with_the_report_of_each_loaded_adapter()
    {
        await Image(Request(1, ("style", null), ("detail", 1.0)));
        var names = new[] { "broken", "detail", "other", "style", "style-diffusers", "style-kohya", "zimage-style" };

        var listing = await fixture.Client.ListLorasAsync();
        Assert.Equal(names, listing.Loras.Select(l => l.Name));
        Assert.Equal(4u, listing.MaxLorasPerRequest);
        Assert.Equal(2UL << 30, listing.CacheBudgetBytes);
        var style = listing.Loras.Single(l => l.Name == "style");
        Assert.Equal((ulong)new FileInfo(TestLoras.PathOf("style")).Length, style.FileBytes);
        var loaded = Assert.Single(style.Loaded);
        Assert.Equal(("tiny", "bfl", 4u), (loaded.Model, loaded.Format, Assert.Single(loaded.Ranks)));
        Assert.Equal((ulong)TestLoras.LoadedBytes("style"), loaded.Bytes);
        Assert.True(loaded.Targets > 0 && loaded.Modules == loaded.Targets, $"{loaded.Modules} modules onto {loaded.Targets} targets");
        Assert.StartsWith("style: bfl", loaded.Summary);
        var detail = Assert.Single(listing.Loras.Single(l => l.Name == "detail").Loaded);
        Assert.Equal(("kohya", 2u, 1.0), (detail.Format, Assert.Single(detail.Ranks), Assert.Single(detail.Alphas)));   // kohya stores alpha = rank / 2
        Assert.True(detail.Targets < loaded.Targets, "attention-only adapts fewer linears");
        Assert.Empty(listing.Loras.Single(l => l.Name == "zimage-style").Loaded);
        Assert.True(listing.LoadedBytes >= loaded.Bytes + detail.Bytes);

        using var response = await fixture.Http.GetAsync("v1/loras");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = await Body(response);
        var data = body.GetProperty("data").EnumerateArray().ToList();
        Assert.Equal(names, data.Select(d => d.GetProperty("id").GetString()));
        var http = data.Single(d => d.GetProperty("id").GetString() == "style");
        Assert.Equal((long)style.FileBytes, http.GetProperty("file_bytes").GetInt64());
        var httpLoaded = Assert.Single(http.GetProperty("loaded").EnumerateArray());
        Assert.Equal("bfl", httpLoaded.GetProperty("format").GetString());
        Assert.Equal([4L], httpLoaded.GetProperty("ranks").EnumerateArray().Select(r => r.GetInt64()));
        Assert.Equal((long)loaded.Targets, httpLoaded.GetProperty("targets").GetInt64());
        Assert.Equal(4, body.GetProperty("max_loras_per_request").GetInt32());

        // The LoRA settings of each model: the per-request limit and (none here) merged adapters.
        var models = await fixture.Client.ListModelsAsync();
        Assert.All(models, m => Assert.Equal(4u, m.MaxLoras));
        Assert.All(models, m => Assert.Empty(m.MergedLoras));
        var httpModels = (await Body(await fixture.Http.GetAsync("v1/models"))).GetProperty("data").EnumerateArray().ToList();
        Assert.All(httpModels, m => Assert.Equal(4, m.GetProperty("max_loras").GetInt32()));
    }

    [Fact]
    public async Task Each_family_takes_its_own_adapters_from_the_one_folder()
    {
        GenerateRequest ZImage(params (string Name, double? Scale)[] loras)
        {
            var r = Request(4, loras);
            r.Model = "zimage";
            return r;
        }
        byte[] plain = await Image(ZImage());
        byte[] styled = await Image(ZImage(("zimage-style", null)));
        Assert.NotEqual(plain, styled);
        Assert.Equal(styled, await Image(ZImage(("zimage-style", null))));

        var listing = await fixture.Client.ListLorasAsync();
        var loaded = Assert.Single(listing.Loras.Single(l => l.Name == "zimage-style").Loaded);
        Assert.Equal(("zimage", "diffusers"), (loaded.Model, loaded.Format));

        // A FLUX.2 adapter does not fit Z-Image's layers (and the other way round): refused naming the first bad key.
        var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.GenerateAsync(ZImage(("style", null))));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("loras[0].name: adapter 'style'", e.Status.Detail);
        Assert.Contains("is not an adaptable layer of this model", e.Status.Detail);
    }

    [Theory]
    [InlineData("nope", "loras[0].name: unknown adapter 'nope'")]
    [InlineData("../style", "loras[0].name: '../style' is not an adapter name")]
    [InlineData("/etc/passwd", "is not an adapter name")]
    [InlineData("broken", "loras[0].name: adapter 'broken' (broken.safetensors)")]
    [InlineData("zimage-style", "is not an adaptable layer of this model")]
    public async Task A_bad_adapter_name_or_file_is_invalid_argument_naming_loras(string name, string expected)
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.GenerateAsync(Request(1, (name, null))));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains(expected, e.Status.Detail);
        Assert.DoesNotContain(TestLoras.Dir, e.Status.Detail);      // no server path reaches the client
        Assert.Equal("loras", TestImages.Trailer(e, "field"));

        var (response, body) = await PostJson(fixture.Http, "v1/images/generations",
            new { prompt = "p", size = "64x64", steps = 1, loras = new[] { new { name, scale = 1.0 } } });
        Assert.Contains(expected, AssertError(response, body, 400, "loras"));
    }

    [Fact]
    public async Task Too_many_adapters_a_scale_out_of_range_or_a_name_given_twice_is_invalid_argument_naming_loras()
    {
        var cases = new (GenerateRequest Request, string Expected)[]
        {
            (Request(1, ("style", null), ("other", null), ("detail", null), ("style-kohya", null), ("style-diffusers", null)), "loras: 5 adapters given, at most 4 are allowed"),
            (Request(1, ("style", 100.0)), "loras[0].scale: 100"),
            (Request(1, ("style", double.NaN)), "loras[0].scale: NaN"),
            (Request(1, ("style", null), ("style", 0.5)), "loras[1].name: adapter 'style' is named twice"),
        };
        foreach (var (request, expected) in cases)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => fixture.Client.GenerateAsync(request));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.Contains(expected, e.Status.Detail);
            Assert.Equal("loras", TestImages.Trailer(e, "field"));
        }
    }

    [Fact]
    public async Task HTTP_generations_and_multipart_edits_carry_loras_and_match_grpc()
    {
        byte[] grpc = await Image(Request(5, ("style", 0.7)));
        var (response, body) = await PostJson(fixture.Http, "v1/images/generations", new
        {
            prompt = "a lighthouse at dusk", size = "64x64", steps = 2, seed = 5, response_format = "b64_json",
            loras = new[] { new { name = "style", scale = 0.7 } },
        });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(grpc, Convert.FromBase64String(Assert.Single(body.GetProperty("data").EnumerateArray()).GetProperty("b64_json").GetString()!));

        byte[] reference = Png(64, 48);
        var edit = Request(5, ("detail", null));
        edit.ReferenceImages.Add(new InputImage { Data = ByteString.CopyFrom(reference) });
        byte[] grpcEdit = await Image(edit);
        using var form = Form([("image", reference)], ("prompt", "a lighthouse at dusk"), ("size", "64x64"), ("steps", "2"), ("seed", "5"),
            ("response_format", "b64_json"), ("loras", """[{"name": "detail"}]"""));
        (response, body) = await PostJson(fixture.Http, "v1/images/edits", form);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(grpcEdit, Convert.FromBase64String(Assert.Single(body.GetProperty("data").EnumerateArray()).GetProperty("b64_json").GetString()!));

        // Wrong shapes of the field are 400s naming it.
        foreach (object wrong in new object[] { new { prompt = "p", loras = "style" }, new { prompt = "p", loras = new[] { "style" } },
                     new { prompt = "p", loras = new[] { new { name = "style", scale = "high" } } }, new { prompt = "p", loras = new[] { new { scale = 1 } } } })
        {
            (response, body) = await PostJson(fixture.Http, "v1/images/generations", wrong);
            AssertError(response, body, 400, "loras");
        }
        using var badForm = Form([("image", reference)], ("prompt", "p"), ("loras", "style"));
        (response, body) = await PostJson(fixture.Http, "v1/images/edits", badForm);
        Assert.Contains("JSON array", AssertError(response, body, 400, "loras"));
    }

    [Fact]
    public async Task The_official_OpenAI_client_sends_loras_as_an_extra_JSON_field()
    {
        var request = new GenerateRequest { Prompt = "a red fox", Width = 64, Height = 64, Seed = 0 };
        request.Loras.Add(new LoraRef { Name = "style", Scale = 0.5 });
        byte[] grpc = await Image(request);
        var options = new ImageGenerationOptions { Size = new GeneratedImageSize(64, 64), ResponseFormat = GeneratedImageFormat.Bytes };
        var image = await OpenAiClient("""{"seed": 0, "loras": [{"name": "style", "scale": 0.5}]}""").GenerateImageAsync("a red fox", options);
        Assert.Equal(grpc, image.Value.ImageBytes.ToArray());

        var e = await Assert.ThrowsAsync<ClientResultException>(() => OpenAiClient("""{"loras": [{"name": "nope"}]}""").GenerateImageAsync("a red fox", options));
        Assert.Equal(400, e.Status);
        Assert.Contains("unknown adapter 'nope'", e.Message);
    }

    /// <summary>
    /// The OpenAI client with a per-call pipeline policy adding <paramref name="extraJson"/>'s fields to the request body:
    /// its options model has no additional-properties slot for images (2.15), and a policy is the client's own extension point.
    /// </summary>
    ImageClient OpenAiClient(string extraJson)
    {
        var options = new OpenAIClientOptions { Endpoint = new Uri(fixture.Server.HttpBase, "v1") };
        options.AddPolicy(new ExtraJsonFields(extraJson), PipelinePosition.PerCall);
        return new ImageClient("tiny", new ApiKeyCredential("any-key"), options);
    }

    sealed class ExtraJsonFields(string json) : PipelinePolicy
    {
        public override void Process(PipelineMessage message, IReadOnlyList<PipelinePolicy> pipeline, int currentIndex)
        {
            Rewrite(message);
            ProcessNext(message, pipeline, currentIndex);
        }

        public override async ValueTask ProcessAsync(PipelineMessage message, IReadOnlyList<PipelinePolicy> pipeline, int currentIndex)
        {
            Rewrite(message);
            await ProcessNextAsync(message, pipeline, currentIndex);
        }

        void Rewrite(PipelineMessage message)
        {
            if (message.Request.Content is not { } content) return;
            using var body = new MemoryStream();
            content.WriteTo(body);
            var root = JsonNode.Parse(body.ToArray())!.AsObject();
            foreach (var (key, value) in JsonNode.Parse(json)!.AsObject()) root[key] = value?.DeepClone();
            message.Request.Content = BinaryContent.Create(BinaryData.FromString(root.ToJsonString()));
        }
    }
}
