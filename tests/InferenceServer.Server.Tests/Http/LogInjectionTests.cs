using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Json;
using InferenceServer.Server.Observability;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace InferenceServer.Tests.Http;

/// <summary>Text a client controls reaches the log escaped: no forged lines (outside probe: a raw CR reached the log).</summary>
public sealed class LogInjectionTests
{
    [Theory]
    [InlineData("plain text", "plain text")]
    [InlineData("evil\r\nINFO forged", "evil\\r\\nINFO forged")]
    [InlineData("tab\tbell\u0007del\u007f", "tab\\tbell\\x07del\\x7f")]
    [InlineData("café \\ ok", "caf\\u00e9 \\\\ ok")]
    public void Escape_makes_one_printable_ascii_line(string input, string expected) => Assert.Equal(expected, LogText.Escape(input));

    [Fact]
    public void Escape_cuts_long_text_and_says_how_long_it_was()
    {
        var escaped = LogText.Escape(new string('\n', 10_000));
        Assert.True(escaped.Length < LogText.MaxLength + 32, escaped.Length.ToString());
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
