using InferenceServer.Pipeline.Generation;

namespace InferenceServer.Server.Engine;

/// <summary>One request as both front ends hand it to the scheduler (already mapped from gRPC or HTTP fields).</summary>
public sealed record ImageJobRequest
{
    /// <summary>Null or empty: the default model.</summary>
    public string? Model { get; init; }
    /// <summary>The request minus its adapters: the scheduler fills <see cref="GenerationRequest.Loras"/> from <see cref="Loras"/>.</summary>
    public required GenerationRequest Generation { get; init; }
    /// <summary>Adapters by name in the server's adapter folder, resolved (and loaded when needed) before the job is queued.</summary>
    public IReadOnlyList<Lora.RequestedLora> Loras { get; init; } = [];
    /// <summary>Logged and echoed; made by the front end when the client sent none.</summary>
    public required string RequestId { get; init; }
    /// <summary>Deadline relative to admission (gRPC deadline, HTTP timeout header); null: the server default.</summary>
    public TimeSpan? Timeout { get; init; }
    /// <summary>A small JPEG preview every N steps in the progress events (0: none).</summary>
    public int PreviewEvery { get; init; }
    /// <summary>"grpc" or "http", for metrics and logs ("job" for durable jobs).</summary>
    public string Origin { get; init; } = "";
    /// <summary>
    /// A durable job run by <see cref="Jobs.JobRunner"/>: it never heads a batch while a live request waits (live requests
    /// keep their latency), but joins a live batch it is compatible with (jobs fill free batch slots).
    /// </summary>
    public bool Durable { get; init; }
}

/// <summary>What a durable job will run as, checked when it is submitted: its model, batch key and pinned seed.</summary>
/// <param name="BatchKey">Jobs with equal model and key can share one engine batch.</param>
/// <param name="Seed">The request's seed, or the one drawn for it: every attempt of the job makes the same images.</param>
public sealed record JobPlan(string Model, string BatchKey, long Seed, int Steps);

/// <summary>Events of one job, in order: <see cref="Queued"/> (once, at admission), then <see cref="Progress"/> per step.</summary>
public abstract record JobEvent
{
    /// <summary>Admitted; <paramref name="Position"/> jobs are ahead of it (0: next to run).</summary>
    public sealed record Queued(int Position) : JobEvent;
    /// <summary><paramref name="Step"/> of <paramref name="Steps"/> steps done (1-based); <paramref name="Preview"/> a JPEG when asked for.</summary>
    public sealed record Progress(int Step, int Steps, byte[]? Preview) : JobEvent;
}

/// <summary>A finished job: the pipeline's result plus what the server adds (queue time, batch it shared).</summary>
public sealed record JobResult(GenerationResult Generation, string Model, string RequestId, double QueueMilliseconds, double TotalMilliseconds,
    int BatchRequests, int BatchImages);

/// <summary>What a served model looks like to clients (gRPC ListModels, GET /v1/models).</summary>
/// <param name="MaxLoras">Adapters one request may name.</param>
/// <param name="MergedLoras">Adapters merged into the weights at load ("name" or "name:scale"), in merge order.</param>
public sealed record ModelDescriptor(string Name, string Family, int DefaultSteps, int MaxReferences, string LoadedDType, string Device,
    bool IsDefault, bool Ready, DateTimeOffset Created, int MaxLoras, IReadOnlyList<string> MergedLoras);

/// <summary>
/// The one entry point of both front ends. Validation happens here once (field errors as <see cref="ServiceException"/>
/// with <see cref="ErrorKind.InvalidArgument"/>), then admission into the bounded queue (<see cref="ErrorKind.ResourceExhausted"/>
/// when full, answered at once; <see cref="ErrorKind.Unavailable"/> while starting or draining), then the engine.
/// </summary>
public interface IImageGenerator
{
    /// <summary>
    /// Runs one job. <paramref name="onEvent"/> is called on the engine thread and must not block (post to a channel).
    /// Cancelling <paramref name="cancellationToken"/> (client gone) or passing the deadline stops the job between steps
    /// (<see cref="ErrorKind.Cancelled"/> / <see cref="ErrorKind.DeadlineExceeded"/>).
    /// </summary>
    Task<JobResult> GenerateAsync(ImageJobRequest request, Action<JobEvent>? onEvent = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// Checks a request as <see cref="GenerateAsync"/> would (model, fields, adapter names, reference headers) without
    /// queueing it, for a durable job at submission: bad input is refused then, not when a replica runs it.
    /// </summary>
    JobPlan Plan(ImageJobRequest request);

    IReadOnlyList<ModelDescriptor> Models { get; }

    /// <summary>True once the default model is loaded and warmed up, until shutdown starts.</summary>
    bool Ready { get; }

    /// <summary>
    /// What the engine is doing, for /readyz and the health check: "starting", "loading NAME: transformer 45% (3.49 of
    /// 7.75 GB)", "warming up NAME (64x64, 1 step)", "ready", "draining", or "failed: why".
    /// </summary>
    string Phase { get; }

    /// <summary>Raised (on the thread that changed it) when <see cref="Ready"/> may have changed: models warm, drain begun.</summary>
    event Action? ReadinessChanged;
}
