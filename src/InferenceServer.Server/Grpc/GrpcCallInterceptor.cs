using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using Grpc.Core.Interceptors;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Grpc;

/// <summary>
/// Wraps every ImageService call (not health or reflection): checks the API key when <see cref="ServerOptions.ApiKeys"/>
/// is set (<c>authorization: Bearer KEY</c>), answers a <see cref="ServiceException"/> with its status code, the field at
/// fault (<c>field</c> trailer) and when to retry (<c>retry-after</c> seconds and <c>grpc-retry-pushback-ms</c>), turns
/// anything else into INTERNAL naming the request id (logged), and counts every answer in <see cref="ServerMetrics"/>.
/// </summary>
public sealed class GrpcCallInterceptor(IOptions<ServerOptions> options, ServerMetrics metrics, ILogger<GrpcCallInterceptor> log) : Interceptor
{
    const string Origin = "grpc";
    readonly ApiKeys keys = new(options.Value.ApiKeys);

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context,
        UnaryServerMethod<TRequest, TResponse> continuation) => Answer(context, () => continuation(request, context));

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation) =>
        Answer(context, async () => { await continuation(request, responseStream, context); return true; });

    async Task<T> Answer<T>(ServerCallContext context, Func<Task<T>> call)
    {
        var started = Stopwatch.GetTimestamp();
        StatusCode code = StatusCode.OK;
        try
        {
            Authorize(context);
            return await call();
        }
        catch (ServiceException e)
        {
            // The call's deadline cancels the call's token, which the scheduler sees as a client cancel: say which it was.
            if (e.Kind == ErrorKind.Cancelled && DateTime.UtcNow >= context.Deadline)
                e = new ServiceException(ErrorKind.DeadlineExceeded, "the request did not finish within its deadline", inner: e);
            var rpc = ToRpc(e, context);
            code = rpc.StatusCode;
            if (e.Kind == ErrorKind.Internal) log.LogError(e, "request {Id}: {Message}", RequestId(context), ClientText.ForLog(e.Message));
            throw rpc;
        }
        catch (RpcException e)
        {
            code = e.StatusCode;
            throw;
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && context.CancellationToken.IsCancellationRequested)
        {
            // The client went away or the deadline passed while we were writing: nobody reads this answer.
            code = DateTime.UtcNow >= context.Deadline ? StatusCode.DeadlineExceeded : StatusCode.Cancelled;
            throw new RpcException(new Status(code, code == StatusCode.Cancelled ? "the call was cancelled" : "the deadline passed"));
        }
        catch (Exception e)
        {
            code = StatusCode.Internal;
            string id = RequestId(context);
            log.LogError(e, "request {Id}: unhandled {Type} in {Method}", id, e.GetType().Name, context.Method);
            throw new RpcException(new Status(code, $"internal error (request {id}); the server log has the details"));
        }
        finally
        {
            metrics.Answered(Origin, code.ToString(), code != StatusCode.OK, Stopwatch.GetElapsedTime(started).TotalSeconds);
        }
    }

    void Authorize(ServerCallContext context)
    {
        switch (keys.Check(context.RequestHeaders.GetValue("authorization")))
        {
            case ApiKeyCheck.Missing: throw new ServiceException(ErrorKind.Unauthenticated, "an API key is required: send metadata 'authorization: Bearer KEY'", "authorization");
            case ApiKeyCheck.Invalid: throw new ServiceException(ErrorKind.Unauthenticated, "the API key is not valid", "authorization");
        }
    }

    /// <summary>The status each <see cref="ErrorKind"/> documents, with the field and retry hints as trailers.</summary>
    internal static RpcException ToRpc(ServiceException e, ServerCallContext context)
    {
        var code = e.Kind switch
        {
            ErrorKind.InvalidArgument => StatusCode.InvalidArgument,
            ErrorKind.NotFound => StatusCode.NotFound,
            ErrorKind.ResourceExhausted or ErrorKind.TooLarge => StatusCode.ResourceExhausted,
            ErrorKind.DeadlineExceeded => StatusCode.DeadlineExceeded,
            ErrorKind.Cancelled => StatusCode.Cancelled,
            ErrorKind.Unavailable => StatusCode.Unavailable,
            ErrorKind.Unauthenticated => StatusCode.Unauthenticated,
            _ => StatusCode.Internal,
        };
        var trailers = new Metadata();
        if (e.Param is { } field)
            trailers.Add("field", field);
        if (e.RetryAfter is { } after)
        {
            trailers.Add("retry-after", Math.Ceiling(after.TotalSeconds).ToString(CultureInfo.InvariantCulture));
            trailers.Add("grpc-retry-pushback-ms", ((long)after.TotalMilliseconds).ToString(CultureInfo.InvariantCulture));
        }
        // The request id is already in the response trailers (ImageGrpcService.ToJob).
        string message = e.Param is { } p && !e.Message.StartsWith(p, StringComparison.Ordinal) ? $"{p}: {e.Message}" : e.Message;
        return new RpcException(new Status(code, message), trailers);
    }

    static string RequestId(ServerCallContext context) =>
        context.UserState.TryGetValue(ImageGrpcService.RequestIdKey, out var id) ? (string)id : "";
}
