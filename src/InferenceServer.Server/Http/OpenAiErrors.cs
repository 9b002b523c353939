using System.Globalization;
using System.Text.Json;
using InferenceServer.Server.Engine;
using Microsoft.AspNetCore.Http;

namespace InferenceServer.Server.Http;

/// <summary>
/// Errors in OpenAI's shape, <c>{"error": {"message", "type", "param", "code"}}</c>, with the HTTP status of each
/// <see cref="ErrorKind"/> (documented on the enum) and <c>Retry-After</c> (whole seconds) where the error carries one.
/// </summary>
public static class OpenAiErrors
{
    /// <summary>Not a standard code: nginx's "client closed request", written only if the client still reads.</summary>
    public const int ClientClosedRequest = 499;

    public static int Status(ErrorKind kind) => kind switch
    {
        ErrorKind.InvalidArgument => StatusCodes.Status400BadRequest,
        ErrorKind.Unauthenticated => StatusCodes.Status401Unauthorized,
        ErrorKind.NotFound => StatusCodes.Status404NotFound,
        ErrorKind.TooLarge => StatusCodes.Status413PayloadTooLarge,
        ErrorKind.ResourceExhausted => StatusCodes.Status429TooManyRequests,
        ErrorKind.Cancelled => ClientClosedRequest,
        ErrorKind.Unavailable => StatusCodes.Status503ServiceUnavailable,
        ErrorKind.DeadlineExceeded => StatusCodes.Status504GatewayTimeout,
        _ => StatusCodes.Status500InternalServerError,
    };

    /// <summary>OpenAI's <c>error.type</c> and a stable <c>error.code</c> for each kind.</summary>
    static (string Type, string Code) Names(ErrorKind kind) => kind switch
    {
        ErrorKind.InvalidArgument => ("invalid_request_error", "invalid_value"),
        ErrorKind.Unauthenticated => ("invalid_request_error", "invalid_api_key"),
        ErrorKind.NotFound => ("invalid_request_error", "not_found"),
        ErrorKind.TooLarge => ("invalid_request_error", "request_too_large"),
        ErrorKind.ResourceExhausted => ("rate_limit_error", "rate_limit_exceeded"),
        ErrorKind.Cancelled => ("invalid_request_error", "client_closed_request"),
        ErrorKind.Unavailable => ("server_error", "service_unavailable"),
        ErrorKind.DeadlineExceeded => ("server_error", "timeout"),
        _ => ("server_error", "internal_error"),
    };

    /// <summary>Writes the error (status, Retry-After, body) unless the response has started; never throws.</summary>
    public static async Task WriteAsync(HttpContext context, ServiceException error, string? code = null)
    {
        var response = context.Response;
        if (response.HasStarted) return;
        try
        {
            var (type, defaultCode) = Names(error.Kind);
            response.StatusCode = Status(error.Kind);
            if (error.RetryAfter is { } after)
                response.Headers.RetryAfter = Math.Max(1, (int)Math.Ceiling(after.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
            if (error.Kind == ErrorKind.Unauthenticated) response.Headers.WWWAuthenticate = "Bearer";
            response.ContentType = "application/json";
            using var buffer = new MemoryStream();
            using (var json = new Utf8JsonWriter(buffer))
            {
                json.WriteStartObject();
                json.WriteStartObject("error");
                json.WriteString("message", error.Message);
                json.WriteString("type", type);
                json.WriteString("param", error.Param);
                json.WriteString("code", code ?? defaultCode);
                json.WriteEndObject();
                json.WriteEndObject();
            }
            response.ContentLength = buffer.Length;
            // The client may be gone (499): writing is best effort and must not throw into the host.
            await response.Body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
        }
    }
}
