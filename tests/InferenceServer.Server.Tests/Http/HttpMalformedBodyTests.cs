using System.Net.Http.Headers;
using System.Text;
using static InferenceServer.Tests.Http.HttpTestKit;

namespace InferenceServer.Tests.Http;

/// <summary>Regressions from an outside probe: bodies that used to get a 500 get a 400 naming what is wrong.</summary>
public sealed class HttpMalformedBodyTests(HttpServerFixture fixture) : IClassFixture<HttpServerFixture>
{
    readonly HttpClient http = fixture.Http;

    async Task<string> Post(HttpContent content, int status, string? param)
    {
        using var response = await http.PostAsync("v1/images/generations", content);
        var body = await Body(response);
        return AssertError(response, body, status, param);
    }

    static ByteArrayContent RawJson(byte[] bytes)
    {
        var c = new ByteArrayContent(bytes);
        c.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        return c;
    }

    [Theory]
    [InlineData("{\"prompt\":\"\\ud800\",\"size\":\"64x64\"}", "prompt")]                       // a lone surrogate escape
    [InlineData("{\"prompt\":\"a fox\",\"size\":\"\\udc00x64\"}", "size")]
    [InlineData("{\"prompt\":\"a fox\",\"loras\":[{\"name\":\"\\ud800\"}]}", "loras")]
    [InlineData("{\"prompt\":\"a fox\",\"image\":[\"\\ud83d\"]}", "image")]
    public async Task Strings_that_are_not_valid_Unicode_are_400_naming_the_field(string json, string param)
    {
        string message = await Post(RawJson(Encoding.ASCII.GetBytes(json)), 400, param);
        Assert.Contains("not valid Unicode", message);
    }

    [Fact]
    public async Task Invalid_UTF8_bytes_in_a_string_are_400_naming_the_field()
    {
        byte[] body = [.. Encoding.ASCII.GetBytes("{\"prompt\":\"a "), 0xff, 0xfe, 0x80, .. Encoding.ASCII.GetBytes("\",\"size\":\"64x64\"}")];
        using var response = await http.PostAsync("v1/images/generations", RawJson(body));
        var error = await Body(response);
        Assert.Equal(400, (int)response.StatusCode);   // the parser may refuse the bytes itself, or the field does
        Assert.False(string.IsNullOrEmpty(error.GetProperty("error").GetProperty("message").GetString()));
    }

    [Theory]
    [InlineData("no final boundary")]
    [InlineData("cut mid-part")]
    [InlineData("wrong boundary")]
    public async Task Truncated_or_mismatched_multipart_bodies_are_400(string damage)
    {
        const string boundary = "XyZ123";
        string whole = $"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na fox\r\n" +
            $"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" +
            new string('x', 200) + $"\r\n--{boundary}--\r\n";
        string text = damage switch
        {
            "no final boundary" => whole[..whole.LastIndexOf($"\r\n--{boundary}--", StringComparison.Ordinal)],
            "cut mid-part" => whole[..(whole.IndexOf("xxxx", StringComparison.Ordinal) + 50)],
            _ => whole.Replace(boundary, "Other999"),
        };
        var content = new ByteArrayContent(Encoding.ASCII.GetBytes(text));
        content.Headers.TryAddWithoutValidation("Content-Type", $"multipart/form-data; boundary={boundary}");
        using var response = await http.PostAsync("v1/images/edits", content);
        var error = await Body(response);
        Assert.Equal(400, (int)response.StatusCode);
        Assert.False(string.IsNullOrEmpty(error.GetProperty("error").GetProperty("message").GetString()));
        await AssertReady(http);
    }
}
