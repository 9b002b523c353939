using System.Runtime.CompilerServices;
using System.Text;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Jobs;

/// <summary>The job fields of a submission, as either front end read them (validated here, once).</summary>
public sealed record JobFields
{
    public int Priority { get; init; }
    public string? IdempotencyKey { get; init; }
    public string? WebhookUrl { get; init; }
    public IReadOnlyDictionary<string, string> Labels { get; init; } = new Dictionary<string, string>();
    public string? Batch { get; init; }
    public int? MaxAttempts { get; init; }
}

/// <summary>A job and where it stands in the queue (0 when not queued).</summary>
public sealed record JobView(JobRecord Job, int QueuePosition);

/// <summary>
/// The one entry point of both front ends for durable jobs (HTTP <c>/v1/jobs</c>, gRPC <c>JobService</c>): submission with
/// every check done before anything is stored (the generation request as <see cref="IImageGenerator.Plan"/> checks it,
/// the job fields, the per-key limit), reads that tell "unknown" from "expired", cancellation, paging and watching.
/// Errors are <see cref="ServiceException"/>s naming the field, answered by each front end in its own shape.
/// </summary>
public sealed class JobQueue(IJobStore store, IImageGenerator generator, IOptions<ServerOptions> options, ServerMetrics metrics)
{
    public const int MaxLabels = 32;
    public const int MaxListLimit = 1000;
    readonly JobOptions o = options.Value.Jobs;

    public IJobStore Store => store;

    /// <summary>Queues one job; with an idempotency key the owner used within 24 h, that job instead (Created false).</summary>
    public JobView Submit(string owner, ImageJobRequest request, JobFields fields, out bool created)
    {
        var (job, isNew) = SubmitMany(owner, [(request, fields)], prefix: null)[0];
        created = isNew;
        return job;
    }

    /// <summary>Queues several jobs: all are checked first, so a bad one queues none ("jobs[3].prompt: ...").</summary>
    public IReadOnlyList<(JobView Job, bool Created)> SubmitMany(string owner, IReadOnlyList<(ImageJobRequest Request, JobFields Fields)> jobs, string? prefix = "jobs")
    {
        if (jobs.Count == 0) throw ServiceException.Invalid("jobs", "jobs: at least one job is required");
        if (jobs.Count > o.MaxJobsPerCall)
            throw ServiceException.Invalid("jobs", $"jobs: {jobs.Count} jobs in one call, at most {o.MaxJobsPerCall} are allowed (InferenceServer:Jobs:MaxJobsPerCall)");
        var submissions = jobs.Select((j, i) => Check(owner, j.Request, j.Fields, prefix is null ? null : $"{prefix}[{i}]")).ToList();
        IReadOnlyList<(JobRecord Job, bool Created)> stored;
        try { stored = store.SubmitMany(submissions, o.MaxQueuedPerKey); }
        catch (QueueLimitException e)
        {
            throw new ServiceException(ErrorKind.ResourceExhausted,
                $"this API key has {e.Queued} queued jobs; {e.Adding} more would pass its limit of {e.Limit} (InferenceServer:Jobs:MaxQueuedPerKey)",
                retryAfter: TimeSpan.FromSeconds(30));
        }
        metrics.Jobs.Submitted(stored.Count(s => s.Created));
        // Positions: one count per (model, priority) of the call; the call's later new jobs of a group queue right behind its first.
        var next = new Dictionary<(string, int), int>();
        var result = new List<(JobView, bool)>(stored.Count);
        foreach (var (job, created) in stored)
        {
            int position = 0;
            if (job.Status == JobStatus.Queued)
            {
                var group = (job.Submission.Model, job.Submission.Priority);
                if (!created || !next.TryGetValue(group, out position)) position = store.QueuePosition(job);
                if (created) next[group] = position + 1;
            }
            result.Add((new JobView(job, position), created));
        }
        return result;
    }

    JobSubmission Check(string owner, ImageJobRequest request, JobFields f, string? at)
    {
        ServiceException Bad(string field, string message) => ServiceException.Invalid(field, at is null ? $"{field}: {message}" : $"{at}.{field}: {message}");
        JobPlan plan;
        try { plan = generator.Plan(request); }
        catch (ServiceException e) when (at is not null)
        {
            throw new ServiceException(e.Kind, $"{at}: {e.Message}", e.Param, e.RetryAfter, e);
        }
        if (f.IdempotencyKey is { } key && (key.Length is 0 or > 256 || key.Any(char.IsControl)))
            throw Bad("idempotency_key", "1 to 256 characters, no control characters");
        if (f.WebhookUrl is { } url)
        {
            if (WebhookGuard.CheckUrl(url) is { } why) throw Bad("webhook_url", why);
            if (string.IsNullOrEmpty(o.WebhookSecret))
                throw Bad("webhook_url", "this server has no webhook signing secret; start it with --webhook-secret whsec_... (InferenceServer:Jobs:WebhookSecret)");
        }
        if (f.Labels.Count > MaxLabels) throw Bad("labels", $"{f.Labels.Count} labels, at most {MaxLabels} are allowed");
        foreach (var (k, v) in f.Labels)
            if (k.Length is 0 or > 64 || v.Length > 256 || k.Contains(':'))
                throw Bad("labels", $"{ClientText.Quote(k)}: keys are 1 to 64 characters without ':', values at most 256");
        if (f.Batch is { } b && (b.Length is 0 or > 128)) throw Bad("batch", "1 to 128 characters");
        if (f.MaxAttempts is < 1 or > 20) throw Bad("max_attempts", $"{f.MaxAttempts}: use 1 to 20");
        return new JobSubmission(owner, JobRequestCodec.Encode(request, plan.Seed), plan.Model, plan.BatchKey)
        {
            Priority = f.Priority, IdempotencyKey = f.IdempotencyKey, WebhookUrl = f.WebhookUrl, Labels = f.Labels, Batch = f.Batch,
            MaxAttempts = f.MaxAttempts ?? 3, Steps = plan.Steps,
        };
    }

    /// <summary>
    /// The job; 404 for an unknown id or another API key's job (each key sees only its own jobs), and 404 saying so for one
    /// whose retention ended.
    /// </summary>
    public JobView Get(string owner, string id)
    {
        var job = store.Get(id);
        if (job is null || job.Submission.Owner != owner) throw new ServiceException(ErrorKind.NotFound, $"no job {ClientText.Quote(id)}", "id");
        if (job.Expired)
            throw new ServiceException(ErrorKind.NotFound,
                $"job {id} expired: it finished at {job.Finished:u} and finished jobs are kept {o.Retention.TotalHours:0.##} h (or less when results pass {o.MaxResultBytes:N0} bytes)", "id");
        return new JobView(job, store.QueuePosition(job));
    }

    public JobView Cancel(string owner, string id)
    {
        Get(owner, id);
        var job = store.Cancel(id)!;
        return new JobView(job, store.QueuePosition(job));
    }

    public JobImage Image(string owner, string id, int index) => Images(owner, id, [index], "index")[0];

    /// <summary>Images of a succeeded job (all when <paramref name="indexes"/> is empty); 404 naming <paramref name="field"/> otherwise.</summary>
    public IReadOnlyList<JobImage> Images(string owner, string id, IReadOnlyList<int> indexes, string field)
    {
        var job = Get(owner, id).Job;
        if (job.Status != JobStatus.Succeeded)
            throw new ServiceException(ErrorKind.NotFound, $"job {id} is {Name(job.Status)}: images exist once it succeeded", field);
        return (indexes.Count == 0 ? Enumerable.Range(0, job.ImageCount) : indexes).Select(i => store.GetImage(id, i)
            ?? throw new ServiceException(ErrorKind.NotFound, $"job {id} has {job.ImageCount} images (0 to {job.ImageCount - 1}); there is no image {i}", field)).ToList();
    }

    /// <summary>One page, oldest first, and the token of the next (null on the last page).</summary>
    public (IReadOnlyList<JobView> Jobs, string? Next) List(string owner, string? status, string? batch, string? label, int? limit, string? pageToken, string afterField = "after")
    {
        JobStatus? st = null;
        if (!string.IsNullOrEmpty(status))
            st = Enum.TryParse<JobStatus>(status, ignoreCase: true, out var parsed) && !int.TryParse(status, out _) ? parsed
                : throw ServiceException.Invalid("status", $"status {ClientText.Quote(status)}: use queued, running, succeeded, failed or cancelled");
        KeyValuePair<string, string>? byLabel = null;
        if (!string.IsNullOrEmpty(label))
        {
            int colon = label.IndexOf(':');
            if (colon <= 0) throw ServiceException.Invalid("label", $"label {ClientText.Quote(label)}: use key:value");
            byLabel = new(label[..colon], label[(colon + 1)..]);
        }
        int n = limit ?? 100;
        if (n is < 1 or > MaxListLimit) throw ServiceException.Invalid("limit", $"limit {n}: use 1 to {MaxListLimit}");
        long after = string.IsNullOrEmpty(pageToken) ? 0 : ParseToken(pageToken, afterField);
        var page = store.List(new JobQuery(st, string.IsNullOrEmpty(batch) ? null : batch, byLabel, n + 1, after, owner));
        var jobs = page.Take(n).Select(j => new JobView(j, store.QueuePosition(j))).ToList();
        return (jobs, page.Count > n ? Token(jobs[^1].Job.Sequence) : null);
    }

    static string Token(long sequence) => Convert.ToBase64String(Encoding.ASCII.GetBytes($"seq:{sequence}")).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    static long ParseToken(string token, string field)
    {
        try
        {
            string b64 = token.Replace('-', '+').Replace('_', '/');
            string text = Encoding.ASCII.GetString(Convert.FromBase64String(b64.PadRight(b64.Length + (4 - b64.Length % 4) % 4, '=')));
            if (text.StartsWith("seq:", StringComparison.Ordinal) && long.TryParse(text[4..], out long seq) && seq >= 0) return seq;
        }
        catch (FormatException) { }
        throw ServiceException.Invalid(field, $"{field} {ClientText.Quote(token)}: not a page token this server returned");
    }

    /// <summary>Jobs of a batch per state; 404 when the batch has none.</summary>
    public IReadOnlyDictionary<JobStatus, int> Batch(string owner, string batch)
    {
        var counts = store.BatchCounts(batch, owner);
        if (counts.Values.Sum() == 0) throw new ServiceException(ErrorKind.NotFound, $"no jobs in batch {ClientText.Quote(batch)}", "batch");
        return counts;
    }

    /// <summary>
    /// The job's events: its current state first, then every change (status, attempt, progress step) until a terminal
    /// state. Changes are announced by the store (this process's writes; other replicas' over PostgreSQL NOTIFY) and
    /// looked up at least every poll interval; steps passed between two looks are each reported, in order.
    /// </summary>
    public async IAsyncEnumerable<(string Type, JobView Job)> WatchAsync(string owner, string id, [EnumeratorCancellation] CancellationToken ct)
    {
        var signal = new WakeSignal();
        void OnChanged(string changed) { if (changed == id || changed == "*") signal.Set(); }
        store.Changed += OnChanged;
        try
        {
            var current = Get(owner, id);                             // 404 before the stream starts
            JobRecord? last = null;
            while (true)
            {
                foreach (var e in Events(last, current)) yield return e;
                last = current.Job;
                if (last.IsTerminal) yield break;
                await signal.WaitAsync(o.PollInterval, ct).ConfigureAwait(false);
                var job = await Task.Run(() => store.Get(id), ct).ConfigureAwait(false);
                if (job is null || job.Expired) yield break;
                current = new JobView(job, job.Status == JobStatus.Queued ? store.QueuePosition(job) : 0);
            }
        }
        finally { store.Changed -= OnChanged; }
    }

    /// <summary>What happened between two looks at a job, as events: a status change, and each progress step passed.</summary>
    static IEnumerable<(string, JobView)> Events(JobRecord? last, JobView now)
    {
        var j = now.Job;
        if (last is null) { yield return (Name(j.Status), now); yield break; }
        if (j.Status is JobStatus.Running or JobStatus.Succeeded)
        {
            // A run this watcher saw continues from its last step; a new run (first, or another attempt) starts at "running".
            bool seen = last.Status == JobStatus.Running && last.Attempts == j.Attempts;
            if (!seen) yield return ("running", new JobView(j with { Status = JobStatus.Running, Step = 0 }, 0));
            for (int step = seen ? last.Step + 1 : 1; step <= j.Step; step++)
                yield return ("progress", new JobView(j with { Status = JobStatus.Running, Step = step }, 0));
        }
        if (j.Status != JobStatus.Running && (j.Status != last.Status || j.Attempts != last.Attempts))
            yield return (Name(j.Status), now);
    }

    public static string Name(JobStatus s) => s.ToString().ToLowerInvariant();
}
