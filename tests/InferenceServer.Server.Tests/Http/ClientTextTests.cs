using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Json;
using Grpc.Core;
using Grpc.Net.Client;
using InferenceServer.Client.V1;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace InferenceServer.Tests.Http;

/// <summary>
/// Text a client controls reaches the log escaped (outside probe: a raw CR reached the log) and is echoed in answers cut
/// short (the reliability fuzz: a 20 MB model name came back as a 20 MB body, was logged whole, and RSS grew 300 MB a request).
/// </summary>
public sealed class ClientTextTests
{
    [Theory]
    [InlineData("plain text", "plain text")]
    [InlineData("evil\r\nINFO forged", "evil\\r\\nINFO forged")]
    [InlineData("tab\tbell\u0007del\u007f", "tab\\tbell\\x07del\\x7f")]
    [InlineData("café \\ ok", "caf\\u00e9 \\\\ ok")]
    public void Escape_makes_one_printable_ascii_line(string input, string expected) => Assert.Equal(expected, ClientText.ForLog(input));

    [Fact]
    public void Escape_cuts_long_text_and_says_how_long_it_was()
    {
        var escaped = ClientText.ForLog(new string('\n', 10_000));
        Assert.True(escaped.Length < ClientText.MaxLogged + 32, escaped.Length.ToString());
        Assert.EndsWith("...(10000 chars)", escaped);
    }

    [Fact]
    public async Task A_model_name_with_a_line_break_is_logged_escaped()
    {
        var lines = new ConcurrentQueue<string>();
        await using var server = await RunningServer.StartAsync(customize: b => b.Logging.AddProvider(new CapturingProvider(lines)));
        using var http = new HttpClient { BaseAddress = server.HttpBase };
        using var response = await http.PostAsJsonAsync("v1/images/generations", new { prompt = "x", model = "evil\r\nINFO forged line", size = "64x64" });
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Contains(lines, l => l.Contains("evil\\r\\nINFO forged line", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.Contains('\r') || l.Contains("\nINFO forged", StringComparison.Ordinal));
    }

    [Fact]
    public void Quote_keeps_short_values_and_cuts_long_ones_saying_how_long()
    {
        Assert.Equal("'flux2'", ClientText.Quote("flux2"));
        var quoted = ClientText.Quote(new string('m', 20 << 20));
        Assert.StartsWith("'" + new string('m', ClientText.MaxQuoted) + "...'", quoted);
        Assert.EndsWith("(20,971,520 characters)", quoted);
    }

    [Fact]
    public async Task A_huge_model_name_is_answered_with_a_short_error_on_both_apis()
    {
        var lines = new ConcurrentQueue<string>();
        await using var server = await RunningServer.StartAsync(customize: b => b.Logging.AddProvider(new CapturingProvider(lines)));
        string huge = new('m', 4 << 20);
        using var http = new HttpClient { BaseAddress = server.HttpBase };
        using var response = await http.PostAsJsonAsync("v1/images/generations", new { prompt = "x", model = huge, size = "64x64" });
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(body.Length < 1024, $"{body.Length:N0} characters of error body");
        Assert.Contains("(4,194,304 characters)", body);

        using var channel = GrpcChannel.ForAddress(server.GrpcAddress);
        var client = new ImageService.ImageServiceClient(channel);
        var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateAsync(new GenerateRequest { Prompt = "x", Model = huge }).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.True(e.Status.Detail.Length < 1024, $"{e.Status.Detail.Length:N0} characters of status detail");
        Assert.All(lines, l => Assert.True(l.Length < 4096, $"a log line of {l.Length:N0} characters"));
    }

    sealed class CapturingProvider(ConcurrentQueue<string> lines) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new Logger(lines);
        public void Dispose() { }

        sealed class Logger(ConcurrentQueue<string> lines) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                lines.Enqueue(formatter(state, exception));
        }
    }
}
