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

    /// <summary>
    /// The pipeline's <see cref="ArgumentException"/> messages start with the field ("n: 0 images requested, ...",
    /// "size 10x10: ...", "aspect ratio '0:1': ..."); this recovers the field's API name.
    /// </summary>
    public static ServiceException FromArgument(ArgumentException e)
    {
        string m = e.Message;
        string? param = m switch
        {
            _ when m.StartsWith("prompt", StringComparison.Ordinal) => "prompt",
            _ when m.StartsWith("image", StringComparison.Ordinal) => "image",
            _ when m.StartsWith("n:", StringComparison.Ordinal) => "n",
            _ when m.StartsWith("steps", StringComparison.Ordinal) => "steps",
            _ when m.StartsWith("quality", StringComparison.Ordinal) => "output_compression",
            _ when m.StartsWith("size", StringComparison.Ordinal) => "size",
            _ when m.StartsWith("aspect ratio", StringComparison.Ordinal) => "aspect_ratio",
            _ when m.StartsWith("resolution", StringComparison.Ordinal) => "resolution",
            _ when m.StartsWith("guidance", StringComparison.Ordinal) => "guidance",
            _ when m.StartsWith("seed", StringComparison.Ordinal) => "seed",
            _ => e.ParamName,
        };
        return new ServiceException(ErrorKind.InvalidArgument, m, param, inner: e);
    }
}
