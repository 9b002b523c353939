using InferenceServer.Pipeline.Generation;
namespace InferenceServer.Server.Engine;

/// <summary>What went wrong, in the terms both front ends map to a status: gRPC status codes and HTTP status codes.</summary>
public enum ErrorKind
{
    /// <summary>gRPC INVALID_ARGUMENT, HTTP 400.</summary>
    InvalidArgument,
    /// <summary>gRPC NOT_FOUND, HTTP 404 (unknown model, expired file).</summary>
    NotFound,
    /// <summary>gRPC RESOURCE_EXHAUSTED, HTTP 429 (queue full) — or 507-like device memory exhaustion, also 429 with Retry-After.</summary>
    ResourceExhausted,
    /// <summary>gRPC RESOURCE_EXHAUSTED, HTTP 413 (a body or message over the size limit).</summary>
    TooLarge,
    /// <summary>gRPC DEADLINE_EXCEEDED, HTTP 504.</summary>
    DeadlineExceeded,
    /// <summary>gRPC CANCELLED, HTTP 499 (the client went away; nobody reads the answer).</summary>
    Cancelled,
    /// <summary>gRPC UNAVAILABLE, HTTP 503 (starting, draining for shutdown).</summary>
    Unavailable,
    /// <summary>gRPC UNAUTHENTICATED, HTTP 401.</summary>
    Unauthenticated,
    /// <summary>gRPC INTERNAL, HTTP 500 (a bug: logged with the request id).</summary>
    Internal,
}

/// <summary>
/// An error a client can cause or must be told about. Thrown by the scheduler and the front ends, and answered by them —
/// never thrown through to the host. <see cref="Param"/> names the request field at fault (OpenAI's <c>param</c>).
/// </summary>
public sealed class ServiceException(ErrorKind kind, string message, string? param = null, TimeSpan? retryAfter = null, Exception? inner = null)
    : Exception(message, inner)
{
    public ErrorKind Kind { get; } = kind;
    public string? Param { get; } = param;
    /// <summary>For <see cref="ErrorKind.ResourceExhausted"/> / <see cref="ErrorKind.Unavailable"/>: when to try again.</summary>
    public TimeSpan? RetryAfter { get; } = retryAfter;

    public static ServiceException Invalid(string param, string message) => new(ErrorKind.InvalidArgument, message, param);

    /// <summary>A request the pipeline refused: INVALID_ARGUMENT / 400 naming the field it carries.</summary>
    public static ServiceException FromRequest(RequestException e) => new(ErrorKind.InvalidArgument, e.Message, e.Field, inner: e);
}
