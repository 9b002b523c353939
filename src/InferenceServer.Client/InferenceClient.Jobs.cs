using System.Runtime.CompilerServices;
using Grpc.Core;
using InferenceServer.Client.V1;

namespace InferenceServer.Client;

/// <summary>
/// The typed calls of inference.v1.JobService: durable jobs, stored by the server (SQLite, or PostgreSQL shared by every
/// replica) and run when an engine has room, so a submission outlives the connection that made it. Same conventions as
/// the image calls: the API key in the headers (jobs belong to the key that submitted them), the default deadline unless
/// a call takes its own.
/// </summary>
/// <example><code>
/// var submitted = await client.SubmitJobAsync(new SubmitJobRequest
/// {
///     Request = new GenerateRequest { Prompt = "a red fox", Width = 1024, Height = 768 },
///     IdempotencyKey = "fox-0001",                     // a retried submission returns this job instead of queueing another
/// });
/// var job = await client.WaitForJobAsync(submitted.Job.Id);
/// if (job.Status == JobState.Succeeded) File.WriteAllBytes("fox.png", (await client.GetJobImagesAsync(job.Id))[0].Data.ToByteArray());
/// </code></example>
public sealed partial class InferenceClient
{
    /// <summary>
    /// Queues one job; its <c>Job</c> comes back at once (queued). With an <c>idempotency_key</c> that the same API key used
    /// within 24 h, the existing job comes back with <c>created = false</c>: that makes a submission safe to retry (after
    /// a timeout, or the UNAVAILABLE retries of <see cref="ForReplicas"/>); without a key, a retried submission that the
    /// server did store queues a second job.
    /// </summary>
    public async Task<SubmitJobResponse> SubmitJobAsync(SubmitJobRequest request, CancellationToken cancellationToken = default) =>
        await Jobs.SubmitJobAsync(request, Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false);

    /// <summary>
    /// Queues many jobs in one call, all checked before any is queued (one bad request refuses the call, its message
    /// naming <c>jobs[i]</c>); at most the server's per-call limit (1000 by default, else INVALID_ARGUMENT with
    /// <c>field: jobs</c>). The answers are in the order submitted. Idempotency keys make it safe to retry, as for one job.
    /// </summary>
    public async Task<IReadOnlyList<SubmitJobResponse>> SubmitJobsAsync(IEnumerable<SubmitJobRequest> jobs, CancellationToken cancellationToken = default)
    {
        var request = new SubmitJobsRequest { Jobs = { jobs } };
        return (await Jobs.SubmitJobsAsync(request, Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false)).Jobs;
    }

    /// <summary>The job now: state, queue position, step, attempts, result (image sizes, not bytes), error. NOT_FOUND once it expired.</summary>
    public async Task<Job> GetJobAsync(string id, CancellationToken cancellationToken = default) =>
        await Jobs.GetJobAsync(new GetJobRequest { Id = id }, Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false);

    /// <summary>
    /// Cancels a job: a queued one is cancelled at once; a running one comes back with <c>cancel_requested</c> and stops at
    /// its next step (<see cref="WaitForJobAsync"/> then returns it cancelled); a finished one is returned unchanged.
    /// </summary>
    public async Task<Job> CancelJobAsync(string id, CancellationToken cancellationToken = default) =>
        await Jobs.CancelJobAsync(new CancelJobRequest { Id = id }, Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false);

    /// <summary>
    /// The job's events: first its current state (<c>queued</c>, <c>running</c>, or a terminal one), then <c>running</c>
    /// when a run starts, <c>progress</c> for every step in order (steps finished between two looks are all reported),
    /// and the terminal state (<c>succeeded</c>, <c>failed</c>, <c>cancelled</c>), after which the stream ends. Unlike
    /// <see cref="GenerateStreamAsync"/>, leaving the loop does not cancel the job: it runs on without watchers.
    /// </summary>
    /// <param name="timeout">The watch's deadline (a queued job may wait long: pass one that fits); null: the default.</param>
    public async IAsyncEnumerable<JobEvent> WatchJobAsync(string id, TimeSpan? timeout = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var call = Jobs.WatchJob(new WatchJobRequest { Id = id }, Options(timeout, cancellationToken));
        await foreach (var e in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            yield return e;
    }

    /// <summary>
    /// Watches the job until it is finished and returns it then (check <c>Status</c>: a failed or cancelled job is returned,
    /// not thrown). The job lives in the server's store, not in the watch, so a watch cut off with UNAVAILABLE (a replica
    /// restarting or gone; another one sharing the store answers the next) is opened again, up to
    /// <see cref="InferenceClientOptions.MaxAttempts"/> times in a row.
    /// </summary>
    /// <param name="timeout">How long to wait in all; null: the default deadline.</param>
    public async Task<Job> WaitForJobAsync(string id, TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        var options = Options(timeout, cancellationToken);             // one deadline for every watch
        for (int failures = 0; ; )
        {
            try
            {
                using var call = Jobs.WatchJob(new WatchJobRequest { Id = id }, options);
                await foreach (var e in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                {
                    failures = 0;
                    if (IsTerminal(e.Job.Status)) return e.Job;
                }
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && ++failures < maxAttempts)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(200 << Math.Min(failures, 5)), cancellationToken).ConfigureAwait(false);
                continue;
            }
            // The stream ended without a terminal state (it ends then only when the job expired meanwhile): ask once.
            var job = await Jobs.GetJobAsync(new GetJobRequest { Id = id }, options).ResponseAsync.ConfigureAwait(false);
            if (IsTerminal(job.Status)) return job;
        }
    }

    /// <summary>Succeeded, failed or cancelled: the job will not change any more.</summary>
    public static bool IsTerminal(JobState state) => state is JobState.Succeeded or JobState.Failed or JobState.Cancelled;

    /// <summary>
    /// One page of jobs, oldest first, filtered by <c>status</c>, <c>batch</c> and <c>label</c> ("key:value"); <c>limit</c>
    /// 0 means 100. Pass the answer's <c>next_page_token</c> as <c>page_token</c> for the next page (empty on the last);
    /// <see cref="ListAllJobsAsync"/> does that for you. A token that is not one the server made is INVALID_ARGUMENT
    /// (<c>field: page_token</c>).
    /// </summary>
    public async Task<ListJobsResponse> ListJobsAsync(ListJobsRequest request, CancellationToken cancellationToken = default) =>
        await Jobs.ListJobsAsync(request, Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false);

    /// <summary>
    /// Every job matching <paramref name="filter"/> (its status, batch, label and page size; its page_token is the start),
    /// oldest first, one ListJobs call per page as the loop goes on. Jobs submitted while it runs may appear at the end.
    /// </summary>
    public async IAsyncEnumerable<Job> ListAllJobsAsync(ListJobsRequest? filter = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = filter?.Clone() ?? new ListJobsRequest();
        do
        {
            var page = await ListJobsAsync(request, cancellationToken).ConfigureAwait(false);
            foreach (var job in page.Jobs) yield return job;
            request.PageToken = page.NextPageToken;
        }
        while (request.PageToken.Length > 0);
    }

    /// <summary>
    /// The images of a succeeded job (bytes, type, size, seed), all or those at <paramref name="indexes"/>, in one message:
    /// ask for a few at a time when a job has many large ones. Only a succeeded job has images: check its state first
    /// (<see cref="WaitForJobAsync"/>); an index it does not have is NOT_FOUND.
    /// </summary>
    /// <param name="timeout">The call's deadline (large images take a while to send); null: the default.</param>
    public async Task<IReadOnlyList<GeneratedImage>> GetJobImagesAsync(string id, IEnumerable<uint>? indexes = null, TimeSpan? timeout = null,
        CancellationToken cancellationToken = default)
    {
        var request = new GetJobImagesRequest { Id = id };
        if (indexes is not null) request.Indexes.Add(indexes);
        return (await Jobs.GetJobImagesAsync(request, Options(timeout, cancellationToken)).ResponseAsync.ConfigureAwait(false)).Images;
    }

    /// <summary>The jobs of a batch (<c>SubmitJobRequest.batch</c>) counted per state.</summary>
    public async Task<Batch> GetBatchAsync(string batch, CancellationToken cancellationToken = default) =>
        await Jobs.GetBatchAsync(new GetBatchRequest { Batch = batch }, Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false);
}
