using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Observability;
using Grpc.AspNetCore.Server;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace InferenceServer.Server.Http;

/// <summary>
/// What every HTTP (not gRPC) request goes through: the request id (<c>X-Request-Id</c> taken from the client when it is
/// sane, made otherwise; echoed in the response and put in a logging scope), the API key check when
/// <see cref="ServerOptions.ApiKeys"/> is set (<c>Authorization: Bearer KEY</c> on every route but /healthz, /readyz and
/// /metrics, else 401 in OpenAI's shape), and a last-resort handler that turns an unexpected exception into a 500 with
/// the request id instead of a dropped connection. Each port serves its own API: on the gRPC port (HTTP/2) only gRPC
/// methods pass, untouched (their auth is the gRPC interceptor's), anything else is 404; on the HTTP port a gRPC method is
/// 404. Which API a request reaches is decided by the matched endpoint and the port, never by a header the client sets
/// (a <c>content-type: application/grpc</c> header used to skip the key check on the HTTP routes).
/// </summary>
public sealed class OpenAiHttpMiddleware(RequestDelegate next, ServerOptions options, ServerMetrics metrics, IdleMemoryRelease memory, ILogger<OpenAiHttpMiddleware> log)
{
    public const string RequestIdHeader = "X-Request-Id";
    const string RequestIdItem = "InferenceServer.RequestId";

    readonly ApiKeys keys = new(options.ApiKeys);

    /// <summary>The id this middleware gave the request.</summary>
    public static string RequestId(HttpContext context) =>
        context.Items.TryGetValue(RequestIdItem, out var id) && id is string s ? s : context.TraceIdentifier;

    public async Task InvokeAsync(HttpContext context)
    {
        // Every request on both ports passes here: the last one to end starts the idle countdown to a memory release.
        try { await Handle(context).ConfigureAwait(false); }
        finally { memory.RequestEnded(); }
    }

    async Task Handle(HttpContext context)
    {
        bool grpcMethod = context.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>() is not null;
        if (HttpProtocol.IsHttp2(context.Request.Protocol))   // the gRPC port: the HTTP port speaks HTTP/1.1 only
        {
            if (grpcMethod) await next(context).ConfigureAwait(false);
            else
            {
                await OpenAiErrors.WriteAsync(context, new ServiceException(ErrorKind.NotFound,
                    $"{ClientText.Quote(context.Request.Path.Value)}: this port serves gRPC only; the HTTP API is on the HTTP port")).ConfigureAwait(false);
                metrics.Answered("http", "404", error: true, 0);
            }
            return;
        }
        string id = SaneId(context.Request.Headers[RequestIdHeader].ToString()) ?? Guid.NewGuid().ToString("N");
        context.Items[RequestIdItem] = id;
        context.TraceIdentifier = id;
        context.Response.Headers[RequestIdHeader] = id;
        using var scope = log.BeginScope("request {XRequestId}", id);

        if (!IsOpen(context.Request.Path) && keys.Check(context.Request.Headers.Authorization.ToString()) != ApiKeyCheck.Accepted)
        {
            await OpenAiErrors.WriteAsync(context, new ServiceException(ErrorKind.Unauthenticated,
                "a valid API key is required: send 'Authorization: Bearer YOUR_KEY'")).ConfigureAwait(false);
            metrics.Answered("http", "401", error: true, 0);
            return;
        }
        if (grpcMethod)
        {
            await OpenAiErrors.WriteAsync(context, new ServiceException(ErrorKind.NotFound,
                $"{context.Request.Path}: gRPC is served on the gRPC port (HTTP/2), not on the HTTP port")).ConfigureAwait(false);
            metrics.Answered("http", "404", error: true, 0);
            return;
        }
        try
        {
            await next(context).ConfigureAwait(false);
        }
        catch (Exception e) when (!context.Response.HasStarted)
        {
            log.LogError(e, "unhandled error answering {Method} {Path}", ClientText.ForLog(context.Request.Method), ClientText.ForLog(context.Request.Path.Value));
            await OpenAiErrors.WriteAsync(context, new ServiceException(ErrorKind.Internal, $"internal error (request id {id})")).ConfigureAwait(false);
            metrics.Answered("http", "500", error: true, 0);
        }
    }

    static bool IsOpen(PathString path) =>
        path.Equals("/healthz", StringComparison.OrdinalIgnoreCase) || path.Equals("/readyz", StringComparison.OrdinalIgnoreCase)
        || path.Equals("/metrics", StringComparison.OrdinalIgnoreCase);

    /// <summary>A client id is kept when it is 1-128 printable ASCII characters (it goes into logs and headers).</summary>
    static string? SaneId(string id) =>
        id.Length is > 0 and <= 128 && id.All(c => c is > ' ' and < (char)127) ? id : null;
}
