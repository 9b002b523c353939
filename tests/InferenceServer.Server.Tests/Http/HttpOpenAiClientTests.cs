#pragma warning disable OPENAI001 // usage, size and output_format of GeneratedImageCollection are marked experimental
using System.ClientModel;
using InferenceServer.Pipeline.Images;
using OpenAI;
using OpenAI.Images;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Http;

/// <summary>The official OpenAI .NET client (2.15) against the server: it must parse every answer, extras included.</summary>
public sealed class HttpOpenAiClientTests(HttpServerFixture fixture) : IClassFixture<HttpServerFixture>
{
    static readonly ImageCodec Codec = new();

    ImageClient Client(string model = "tiny") =>
        new(model, new ApiKeyCredential("any-key"), new OpenAIClientOptions { Endpoint = new Uri(fixture.Server.HttpBase, "v1") });

    [Fact]
    public async Task OpenAI_client_generates_bytes_and_urls()
    {
        var client = Client();
        var bytes = await client.GenerateImageAsync("a red fox", new ImageGenerationOptions
        {
            Size = new GeneratedImageSize(96, 64), ResponseFormat = GeneratedImageFormat.Bytes, Quality = GeneratedImageQuality.High,
        });
        var image = Codec.Decode(bytes.Value.ImageBytes.ToArray());
        Assert.Equal((96, 64), (image.Width, image.Height));

        var url = await client.GenerateImageAsync("a red fox", new ImageGenerationOptions { Size = new GeneratedImageSize(64, 64), ResponseFormat = GeneratedImageFormat.Uri });
        Assert.NotNull(url.Value.ImageUri);
        Assert.Null(url.Value.ImageBytes);
        using var http = NewHttp(fixture.Server);
        var downloaded = Codec.Decode(await http.GetByteArrayAsync(url.Value.ImageUri));
        Assert.Equal((64, 64), (downloaded.Width, downloaded.Height));

        var three = await client.GenerateImagesAsync("three foxes", 3, new ImageGenerationOptions { Size = new GeneratedImageSize(64, 64), ResponseFormat = GeneratedImageFormat.Bytes });
        Assert.Equal(3, three.Value.Count);
        Assert.True(three.Value.CreatedAt > DateTimeOffset.UtcNow.AddMinutes(-5));
        Assert.NotNull(three.Value.Usage);
        Assert.Equal(3 * 4 * 4, three.Value.Usage.OutputTokenCount);
        Assert.Equal(new GeneratedImageSize(64, 64), three.Value.Size);
        Assert.Equal(GeneratedImageFileFormat.Png, three.Value.OutputFileFormat);
    }

    [Fact]
    public async Task OpenAI_client_edits_with_bytes_response()
    {
        using var png = new MemoryStream(Png(64, 48));
        var edit = await Client().GenerateImageEditAsync(png, "input.png", "make it night", new ImageEditOptions
        {
            Size = new GeneratedImageSize(64, 64), ResponseFormat = GeneratedImageFormat.Bytes,
        });
        var image = Codec.Decode(edit.Value.ImageBytes.ToArray());
        Assert.Equal((64, 64), (image.Width, image.Height));
    }

    [Fact]
    public async Task OpenAI_client_sees_errors_as_client_result_exceptions_with_status()
    {
        var e = await Assert.ThrowsAsync<ClientResultException>(() => Client("dall-e-3").GenerateImageAsync("x",
            new ImageGenerationOptions { Size = new GeneratedImageSize(64, 64) }));
        Assert.Equal(404, e.Status);
        Assert.Contains("dall-e-3", e.Message);
    }
}
