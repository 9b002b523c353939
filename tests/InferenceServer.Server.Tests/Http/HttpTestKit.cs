using System.Buffers.Binary;
using System.IO.Compression;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using InferenceServer.Pipeline.Images;
using InferenceServer.Tests.Serving;

namespace InferenceServer.Tests.Http;

/// <summary>One server shared by the HTTP tests that need no special options.</summary>
public sealed class HttpServerFixture : IAsyncLifetime
{
    public RunningServer Server { get; private set; } = null!;
    public HttpClient Http { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Server = await RunningServer.StartAsync();
        Http = HttpTestKit.NewHttp(Server);
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
    }
}

static class HttpTestKit
{
    public static HttpClient NewHttp(RunningServer server) => new() { BaseAddress = server.HttpBase, Timeout = TimeSpan.FromMinutes(2) };

    public static StringContent Json(object body) => new(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json");

    public static async Task<(HttpResponseMessage Response, JsonElement Body)> PostJson(HttpClient http, string path, object body, Action<HttpRequestMessage>? edit = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = body as HttpContent ?? Json(body) };
        edit?.Invoke(request);
        var response = await http.SendAsync(request);
        return (response, await Body(response));
    }

    public static async Task<JsonElement> Body(HttpResponseMessage response)
    {
        string text = await response.Content.ReadAsStringAsync();
        try { return JsonDocument.Parse(text).RootElement.Clone(); }
        catch (JsonException) { throw new Xunit.Sdk.XunitException($"not JSON ({(int)response.StatusCode}): {text}"); }
    }

    /// <summary>Asserts an OpenAI error body with <paramref name="status"/> and <paramref name="param"/>; returns the message.</summary>
    public static string AssertError(HttpResponseMessage response, JsonElement body, int status, string? param)
    {
        Assert.True((int)response.StatusCode == status, $"expected {status}, got {(int)response.StatusCode}: {body}");
        var error = body.GetProperty("error");
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.False(string.IsNullOrEmpty(error.GetProperty("type").GetString()));
        Assert.False(string.IsNullOrEmpty(error.GetProperty("code").GetString()));
        string message = error.GetProperty("message").GetString()!;
        Assert.DoesNotContain("   at ", message);   // never a stack trace
        return message;
    }

    /// <summary>A smooth RGB test image encoded as PNG.</summary>
    public static byte[] Png(int width, int height, int seed = 1)
    {
        var rgb = new byte[width * height * 3];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                int i = (y * width + x) * 3;
                rgb[i] = (byte)(x * 255 / width);
                rgb[i + 1] = (byte)(y * 255 / height);
                rgb[i + 2] = (byte)(seed * 40);
            }
        return ImageCodec.Encode(new RgbImage(width, height, rgb), ImageFormat.Png).Bytes;
    }

    /// <summary>A valid PNG of under 100 bytes whose header claims <paramref name="side"/> x <paramref name="side"/> RGB pixels.</summary>
    public static byte[] PngBomb(int side)
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, side);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), side);
        ihdr[8] = 8; ihdr[9] = 2;
        Chunk(ms, "IHDR", ihdr);
        using (var z = new MemoryStream())
        {
            using (var deflate = new ZLibStream(z, CompressionLevel.Optimal, leaveOpen: true)) deflate.WriteByte(0);
            Chunk(ms, "IDAT", z.ToArray());
        }
        Chunk(ms, "IEND", []);
        return ms.ToArray();
    }

    static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        s.Write(word);
        byte[] typed = [.. Encoding.ASCII.GetBytes(type), .. data];
        s.Write(typed);
        uint crc = 0xFFFFFFFF;
        foreach (byte b in typed)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
        }
        BinaryPrimitives.WriteUInt32BigEndian(word, ~crc);
        s.Write(word);
    }

    public static MultipartFormDataContent Form(IEnumerable<(string Name, byte[] Bytes)> files, params (string Name, string Value)[] fields)
    {
        var form = new MultipartFormDataContent();
        foreach (var (name, value) in fields) form.Add(new StringContent(value), name);
        int k = 0;
        foreach (var (name, bytes) in files)
        {
            var part = new ByteArrayContent(bytes);
            part.Headers.ContentType = new MediaTypeHeaderValue("image/png");
            form.Add(part, name, $"ref{k++}.png");
        }
        return form;
    }

    public static async Task AssertReady(HttpClient http) => Assert.Equal("ready", await http.GetStringAsync("readyz"));
}
