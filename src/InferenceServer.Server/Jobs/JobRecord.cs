namespace InferenceServer.Server.Jobs;

/// <summary>Where a durable job is: queued -> running -> succeeded | failed | cancelled.</summary>
public enum JobStatus { Queued, Running, Succeeded, Failed, Cancelled }

/// <summary>
/// What a client submits: the generation request as its front end received it (JSON, opaque to the store) plus the job
/// fields. <see cref="Model"/> and <see cref="BatchKey"/> are what a replica batches by: jobs claimed together share both.
/// </summary>
/// <param name="Owner">The API key's identity (idempotency keys and per-key limits are per owner); "" without keys.</param>
/// <param name="Request">The generation request (<see cref="JobRequestCodec"/>); empty when read by anything but a claim.</param>
/// <param name="Model">The served model that runs it.</param>
/// <param name="BatchKey">Jobs with equal keys can run in one engine batch (size, steps, guidance...).</param>
public sealed record JobSubmission(string Owner, byte[] Request, string Model, string BatchKey)
{
    /// <summary>Higher first; equal priorities in submission order.</summary>
    public int Priority { get; init; }
    /// <summary>The same key from the same owner within the idempotency window returns the first job, not a new one.</summary>
    public string? IdempotencyKey { get; init; }
    public string? WebhookUrl { get; init; }
    public IReadOnlyDictionary<string, string> Labels { get; init; } = new Dictionary<string, string>();
    /// <summary>A group id for many jobs (a shot, a catalogue).</summary>
    public string? Batch { get; init; }
    /// <summary>Sampling steps it will run (shown as progress 0 of N before its first step).</summary>
    public int Steps { get; init; }
    /// <summary>Runs allowed before the job fails for good (a replica dying mid-run counts as one).</summary>
    public int MaxAttempts { get; init; } = 3;
}

/// <summary>A job's error when it failed: a stable code and a message for people.</summary>
public sealed record JobError(string Code, string Message);

/// <summary>One image of a succeeded job.</summary>
public sealed record JobImage(int Index, string MimeType, byte[] Bytes, long Seed, int Width, int Height);

/// <summary>What a run produced: the images and the result document the front ends return (seeds, size, timings), JSON.</summary>
public sealed record JobResult(IReadOnlyList<JobImage> Images, byte[] Document);

/// <summary>A job as stored. Images are read separately (<see cref="IJobStore.GetImage"/>).</summary>
public sealed record JobRecord(string Id, JobStatus Status, JobSubmission Submission)
{
    public int Attempts { get; init; }
    /// <summary>The replica that holds (or last held) the job's lease.</summary>
    public string? Replica { get; init; }
    public DateTimeOffset? LeaseUntil { get; init; }
    public bool CancelRequested { get; init; }
    public int Step { get; init; }
    public int Steps { get; init; }
    public DateTimeOffset Created { get; init; }
    public DateTimeOffset? Started { get; init; }
    public DateTimeOffset? Finished { get; init; }
    public JobError? Error { get; init; }
    /// <summary>The result document when succeeded (JSON), else null.</summary>
    public byte[]? Result { get; init; }
    public int ImageCount { get; init; }
    /// <summary>Monotonic order of submission: the list cursor.</summary>
    public long Sequence { get; init; }
    /// <summary>Past its retention (or pushed out by the byte budget): only a tombstone is left, no request, result or images.</summary>
    public bool Expired { get; init; }
    /// <summary>Bytes its result holds (images and document).</summary>
    public long ResultBytes { get; init; }
    /// <summary>Null without a webhook.</summary>
    public WebhookState? Webhook { get; init; }
    /// <summary>Every webhook delivery attempt so far, oldest first.</summary>
    public IReadOnlyList<WebhookDelivery> WebhookDeliveries { get; init; } = [];
    public bool IsTerminal => Status is JobStatus.Succeeded or JobStatus.Failed or JobStatus.Cancelled;
}

/// <summary>A filter and page of <see cref="IJobStore.List"/>: jobs after <paramref name="After"/> (a sequence), oldest first.</summary>
/// <param name="Owner">Only this owner's jobs (null: everyone's).</param>
public sealed record JobQuery(JobStatus? Status = null, string? Batch = null, KeyValuePair<string, string>? Label = null, int Limit = 100, long After = 0, string? Owner = null);

/// <summary>Where a job's webhook is: waiting for the job to end, due (now or at its retry time), delivered, or given up after the last retry.</summary>
public enum WebhookState { Waiting, Pending, Delivered, GaveUp }

/// <summary>Job counts by status, and queued jobs per (model, priority): the metrics an autoscaler reads.</summary>
public sealed record JobStats(IReadOnlyDictionary<JobStatus, long> ByStatus, IReadOnlyList<(string Model, int Priority, long Count)> Queued);

/// <summary>A submission refused because its owner would pass its queued-job limit; nothing of it was queued.</summary>
public sealed class QueueLimitException(int queued, int adding, int limit)
    : Exception($"{queued} queued jobs; {adding} more would pass the limit of {limit}")
{
    public int Queued { get; } = queued;
    public int Adding { get; } = adding;
    public int Limit { get; } = limit;
}
