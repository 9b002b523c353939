namespace InferenceServer.Server.Jobs;

/// <summary>
/// Durable jobs: the queue replicas claim from, with leases. Every state change is one transaction, so a job's result
/// and its images become visible together, and a replica that lost its lease (it stalled past the expiry and another
/// replica claimed the job) cannot record a second result. Implementations: <see cref="SqliteJobStore"/> (one machine).
/// </summary>
public interface IJobStore : IDisposable
{
    /// <summary>A new queued job, or (Created false) the owner's job with the same idempotency key submitted within the idempotency window.</summary>
    (JobRecord Job, bool Created) Submit(JobSubmission submission);

    JobRecord? Get(string id);

    /// <summary>Jobs matching <paramref name="query"/>, in submission order, after its cursor.</summary>
    IReadOnlyList<JobRecord> List(JobQuery query);

    /// <summary>Jobs of a batch per status.</summary>
    IReadOnlyDictionary<JobStatus, int> BatchCounts(string batch);

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

    /// <summary>Records a run stopped because cancellation was requested; false when the replica no longer holds the job.</summary>
    bool Cancelled(string id, string replica);

    /// <summary>Running jobs whose lease expired (their replica died or stalled): queued again, or failed when no attempt is left. Returns how many.</summary>
    int ReclaimExpired();

    /// <summary>Deletes finished jobs (and their images) that finished before <paramref name="before"/>. Returns how many.</summary>
    int DeleteFinishedBefore(DateTimeOffset before);

    /// <summary>Image <paramref name="index"/> of a succeeded job, or null.</summary>
    JobImage? GetImage(string id, int index);
}
