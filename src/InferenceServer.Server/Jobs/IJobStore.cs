namespace InferenceServer.Server.Jobs;

/// <summary>
/// Durable jobs: the queue replicas claim from, with leases. Every state change is one transaction, so a job's result
/// and its images become visible together, and a replica that lost its lease (it stalled past the expiry and another
/// replica claimed the job) cannot record a second result. Implementations: <see cref="SqliteJobStore"/> (one machine), <see cref="PostgresJobStore"/> (replicas).
/// </summary>
public interface IJobStore : IDisposable
{
    /// <summary>A new queued job, or (Created false) the owner's job with the same idempotency key submitted within the idempotency window.</summary>
    (JobRecord Job, bool Created) Submit(JobSubmission submission);

    /// <summary>
    /// Several submissions in one transaction: all are queued (or found by their idempotency keys), or none. Throws
    /// <see cref="QueueLimitException"/>, queueing none, when an owner would have more than <paramref name="maxQueuedPerOwner"/> queued jobs.
    /// </summary>
    IReadOnlyList<(JobRecord Job, bool Created)> SubmitMany(IReadOnlyList<JobSubmission> submissions, int maxQueuedPerOwner = int.MaxValue);

    JobRecord? Get(string id);

    /// <summary>Jobs matching <paramref name="query"/>, in submission order, after its cursor.</summary>
    IReadOnlyList<JobRecord> List(JobQuery query);

    /// <summary>Jobs of a batch per status (of one owner when given; expired ones not counted).</summary>
    IReadOnlyDictionary<JobStatus, int> BatchCounts(string batch, string? owner = null);

    /// <summary>Queued jobs (of one owner when given): the per-key limit and the queue-depth metric.</summary>
    int QueuedCount(string? owner = null);

    /// <summary>
    /// Queued: cancelled at once. Running: marked (<see cref="JobRecord.CancelRequested"/>); the replica stops it between steps
    /// and records it with <see cref="Cancelled"/>. Finished: unchanged. Null for an unknown id.
    /// </summary>
    JobRecord? Cancel(string id);

    /// <summary>
    /// Leases up to <paramref name="max"/> queued jobs to <paramref name="replica"/> until now + <paramref name="lease"/>:
    /// the first by priority (then age) among <paramref name="models"/>, and queued jobs that can share its engine batch
    /// (same model and batch key), in the same order. Each claim counts as an attempt.
    /// </summary>
    IReadOnlyList<JobRecord> Claim(string replica, IReadOnlyCollection<string> models, int max, TimeSpan lease);

    /// <summary>Extends a lease the replica still holds and records its progress; null when it no longer holds it.</summary>
    JobRecord? Renew(string id, string replica, TimeSpan lease, int step, int steps);

    /// <summary>Records success with the images in one transaction; false when the replica no longer holds the job.</summary>
    bool Complete(string id, string replica, JobResult result);

    /// <summary>
    /// Records a failed run: queued again when <paramref name="retryable"/> and attempts remain, else failed with
    /// <paramref name="error"/>; false when the replica no longer holds the job.
    /// </summary>
    bool Fail(string id, string replica, JobError error, bool retryable);

    /// <summary>
    /// Gives a running job back to the queue without counting the attempt (this replica could not start it: draining, its
    /// engine queue full); false when the replica no longer holds it.
    /// </summary>
    bool Release(string id, string replica);

    /// <summary>Records a run stopped because cancellation was requested; false when the replica no longer holds the job.</summary>
    bool Cancelled(string id, string replica);

    /// <summary>Running jobs whose lease expired (their replica died or stalled): queued again, or failed when no attempt is left. Returns how many.</summary>
    int ReclaimExpired();

    /// <summary>
    /// Expires finished jobs that finished before <paramref name="finishedBefore"/>, then the oldest finished results beyond
    /// <paramref name="maxResultBytes"/>: their images, request and result are deleted and a tombstone stays (so a GET can
    /// say "expired"); tombstones of jobs finished before <paramref name="forgetBefore"/> are deleted. Returns how many expired.
    /// </summary>
    int Expire(DateTimeOffset finishedBefore, long maxResultBytes, DateTimeOffset forgetBefore);

    /// <summary>Queued jobs of the same model that run before <paramref name="job"/> (0 when it is next, or not queued).</summary>
    int QueuePosition(JobRecord job);

    /// <summary>Counts for the metrics.</summary>
    JobStats Stats();

    /// <summary>
    /// Webhook deliveries now due (at most <paramref name="max"/>), held for this caller for <paramref name="hold"/>: no other
    /// replica sends them meanwhile, and they fall due again if this one dies before recording the attempt.
    /// </summary>
    IReadOnlyList<JobRecord> ClaimWebhooks(int max, TimeSpan hold);

    /// <summary>Appends a delivery attempt: delivered when it succeeded, else due again after <paramref name="retryAfter"/>, or given up when that is null.</summary>
    void RecordDelivery(string id, WebhookDelivery delivery, TimeSpan? retryAfter);

    /// <summary>
    /// Raised with a job's id after a change to it is committed: by this process's writes and, where the database can tell
    /// (PostgreSQL LISTEN/NOTIFY), other replicas'. Handlers run on the writer's thread and must not block.
    /// </summary>
    event Action<string>? Changed;

    /// <summary>Image <paramref name="index"/> of a succeeded job, or null.</summary>
    JobImage? GetImage(string id, int index);
}
