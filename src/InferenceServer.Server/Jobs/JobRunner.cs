using System.Collections.Concurrent;
using System.Diagnostics;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Runs durable jobs on this replica's engine. Capacity: at most two engine batches of jobs are held at once (one running,
/// one waiting), claimed a batch at a time (the head of the queue and compatible jobs, <see cref="IJobStore.Claim"/>), so
/// a farm's jobs batch on the device; they enter the scheduler as <see cref="ImageJobRequest.Durable"/>, which lets any
/// live request head the next batch first (live traffic waits at most for the batch running) while compatible jobs fill
/// free rows of live batches. Each running job's lease is renewed on every step and at least every heartbeat; a renewal
/// that finds the lease lost (this replica stalled past it and another took the job) stops the run and records nothing,
/// one that finds cancellation requested stops it and records it cancelled. The result and its images are committed in
/// one transaction; a store outage is retried until the write lands or the lease is known lost.
/// </summary>
public sealed class JobRunner(JobQueue queue, ImageScheduler scheduler, IImageGenerator generator, IOptions<ServerOptions> options, ServerMetrics metrics, ReplicaIdentity replica,
    ILogger<JobRunner> log) : BackgroundService
{
    readonly IJobStore store = queue.Store;
    readonly JobOptions o = options.Value.Jobs;
    readonly ConcurrentDictionary<string, RunningJob> running = new();
    readonly WakeSignal wake = new();
    volatile bool draining;

    /// <summary>From now on no job is claimed; the ones held finish (the engine drains them).</summary>
    public void BeginDrain()
    {
        draining = true;
        wake.Set();
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try { await scheduler.Loaded.WaitAsync(stoppingToken).ConfigureAwait(false); }
        catch (Exception) { return; }                                 // no model, no jobs; the load error is the scheduler's to report
        log.LogInformation("job runner {Replica}: claiming jobs for {Models} ({Store})", replica.Id, string.Join(", ", scheduler.Models.Select(m => m.Name)), store.GetType().Name);
        store.Changed += OnChanged;
        try { await Loop(stoppingToken).ConfigureAwait(false); }
        finally { store.Changed -= OnChanged; }
    }

    void OnChanged(string id)
    {
        if (running.TryGetValue(id, out var job)) job.Look();
        else wake.Set();                              // new work, a cancel, a reconnect ("*"): look again
    }

    async Task Loop(CancellationToken ct)
    {
        var models = scheduler.Models.Select(m => m.Name).ToList();
        int batch = Math.Max(1, options.Value.Queue.MaxBatchImages);
        long lastReclaim = 0;
        bool failing = false;
        while (!ct.IsCancellationRequested && !draining)
        {
            try
            {
                if (Stopwatch.GetElapsedTime(lastReclaim) >= o.PollInterval)
                {
                    lastReclaim = Stopwatch.GetTimestamp();
                    int expired = await Task.Run(store.ReclaimExpired, ct).ConfigureAwait(false);
                    if (expired > 0)
                    {
                        metrics.Jobs.LeasesExpired(expired);
                        log.LogWarning("{Count} jobs lost their replica's lease (it stopped renewing): returned to the queue or failed", expired);
                    }
                }
                while (running.Count + batch <= 2 * batch && !draining && !ct.IsCancellationRequested)
                {
                    var started = Stopwatch.GetTimestamp();
                    var claimed = await Task.Run(() => store.Claim(replica.Id, models, batch, o.Lease), ct).ConfigureAwait(false);
                    if (claimed.Count == 0) break;
                    metrics.Jobs.Claimed(Stopwatch.GetElapsedTime(started).TotalSeconds);
                    foreach (var job in claimed) Start(job);
                }
                if (failing) log.LogInformation("job store reachable again");
                failing = false;
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
            catch (Exception e)
            {
                if (!failing) log.LogWarning("job store unavailable ({Message}); retrying", e.Message);
                failing = true;
            }
            try { await wake.WaitAsync(failing ? TimeSpan.FromMilliseconds(500) : o.PollInterval, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
        }
    }

    void Start(JobRecord job)
    {
        var state = new RunningJob(job);
        running[job.Id] = state;
        state.Task = Task.Run(() => RunAsync(state));
    }

    async Task RunAsync(RunningJob job)
    {
        string id = job.Record.Id;
        var heartbeat = HeartbeatAsync(job);
        string outcome;
        try
        {
            var request = JobRequestCodec.Decode(job.Record.Submission.Request, id, options.Value.Queue.DefaultTimeout);
            var result = await generator.GenerateAsync(request, e => { if (e is JobEvent.Progress p) job.Progressed(p.Step, p.Steps); }, job.Stop.Token).ConfigureAwait(false);
            var stored = JobResultDocument.FromEngine(result);
            outcome = await Persist(job, () => store.Complete(id, replica.Id, stored)) ? "succeeded" : "lease_lost";
        }
        catch (Exception e) when (job.Lost)
        {
            log.LogWarning("job {Id}: lease lost ({Message}); the replica that holds it now records the result", id, e.Message);
            outcome = "lease_lost";
        }
        catch (Exception) when (job.CancelRequested)
        {
            outcome = await Persist(job, () => store.Cancelled(id, replica.Id)) ? "cancelled" : "lease_lost";
        }
        catch (ServiceException e) when (e.Kind is ErrorKind.Unavailable or ErrorKind.ResourceExhausted)
        {
            // This replica could not take it now (draining, engine queue full): back to the queue, the attempt not counted.
            log.LogInformation("job {Id}: released ({Message})", id, e.Message);
            outcome = await Persist(job, () => store.Release(id, replica.Id)) ? "released" : "lease_lost";
        }
        catch (Exception e)
        {
            var (code, retryable) = e switch
            {
                ServiceException { Kind: ErrorKind.InvalidArgument } => ("invalid_argument", false),
                ServiceException { Kind: ErrorKind.NotFound } => ("not_found", false),
                ServiceException { Kind: ErrorKind.TooLarge } => ("too_large", false),
                ServiceException { Kind: ErrorKind.DeadlineExceeded } => ("deadline_exceeded", true),
                InvalidDataException => ("invalid_request", false),
                _ => ("internal", true),
            };
            if (code == "internal") log.LogError(e, "job {Id} failed (attempt {Attempt} of {Max})", id, job.Record.Attempts, job.Record.Submission.MaxAttempts);
            else log.LogInformation("job {Id} failed: {Code}: {Message}", id, code, e.Message);
            string message = retryable && job.Record.Attempts >= job.Record.Submission.MaxAttempts
                ? $"{e.Message} (attempt {job.Record.Attempts} of {job.Record.Submission.MaxAttempts}: no attempt left)" : e.Message;
            outcome = await Persist(job, () => store.Fail(id, replica.Id, new JobError(code, message), retryable)) ? "failed" : "lease_lost";
        }
        finally
        {
            job.Finish();
            await heartbeat.ConfigureAwait(false);
            running.TryRemove(new KeyValuePair<string, RunningJob>(id, job));   // not a later run of the same job (claimed again after a lost lease)
            wake.Set();                               // room for more
        }
        metrics.Jobs.Finished(outcome);
    }

    /// <summary>Renews the lease on every new step and at least every heartbeat; a look (announced change) checks for cancellation.</summary>
    async Task HeartbeatAsync(RunningJob job)
    {
        var every = TimeSpan.FromTicks(Math.Min(o.Lease.Ticks / 3, TimeSpan.FromSeconds(5).Ticks));
        int written = -1;
        while (!job.Finished)
        {
            var (step, steps) = job.Progress;
            try
            {
                JobRecord? now;
                if (step != written || job.DueForRenewal(every))
                {
                    now = await Task.Run(() => store.Renew(job.Record.Id, replica.Id, o.Lease, step, steps)).ConfigureAwait(false);
                    written = step;
                    job.Renewed();
                }
                else now = await Task.Run(() => store.Get(job.Record.Id)).ConfigureAwait(false);   // an announced change: cancelled?
                if (now is null || now.Status != JobStatus.Running || now.Replica != replica.Id) job.LoseLease();
                else if (now.CancelRequested) job.RequestCancel();
            }
            catch (Exception e) { log.LogDebug("job {Id}: lease renewal failed ({Message}); retrying", job.Record.Id, e.Message); }
            await job.WaitAsync(every).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A terminal write retried through store outages (a database restart): the finished work is not thrown away while the
    /// lease may still be ours. Gives up after two leases: by then another replica has the job.
    /// </summary>
    async Task<bool> Persist(RunningJob job, Func<bool> write)
    {
        var until = Stopwatch.GetTimestamp() + 2 * (long)(o.Lease.TotalSeconds * Stopwatch.Frequency);
        for (int attempt = 0; ; attempt++)
        {
            try { return await Task.Run(write).ConfigureAwait(false); }
            catch (Exception e) when (Stopwatch.GetTimestamp() < until)
            {
                if (attempt == 0) log.LogWarning("job {Id}: cannot record its outcome yet ({Message}); retrying", job.Record.Id, e.Message);
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(2000, 100 << Math.Min(attempt, 5)))).ConfigureAwait(false);
            }
        }
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        BeginDrain();
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
        // The engine finishes what it admitted; wait for those results to be recorded (or the host's timeout).
        var tasks = running.Values.Select(j => j.Task).Where(t => t is not null).Cast<Task>().ToList();
        await Task.WhenAny(Task.WhenAll(tasks), Task.Delay(Timeout.Infinite, cancellationToken)).ConfigureAwait(false);
    }

    /// <summary>A job this replica runs: its progress, its stop switch and why it was pulled.</summary>
    sealed class RunningJob(JobRecord record)
    {
        readonly WakeSignal poke = new();
        readonly Lock gate = new();
        long lastRenewal = Stopwatch.GetTimestamp();
        (int, int) progress;
        public JobRecord Record { get; } = record;
        public CancellationTokenSource Stop { get; } = new();
        public Task? Task { get; set; }
        public volatile bool Lost, CancelRequested, Finished;
        public (int Step, int Steps) Progress { get { lock (gate) return progress; } }

        public void Progressed(int step, int steps)
        {
            lock (gate) progress = (step, steps);
            poke.Set();
        }

        public void Look() => poke.Set();
        public bool DueForRenewal(TimeSpan every) => Stopwatch.GetElapsedTime(Interlocked.Read(ref lastRenewal)) >= every * 0.9;
        public void Renewed() => Interlocked.Exchange(ref lastRenewal, Stopwatch.GetTimestamp());

        public void LoseLease() { Lost = true; Cancel(); }
        public void RequestCancel() { CancelRequested = true; Cancel(); }

        void Cancel()
        {
            try { Stop.Cancel(); } catch (ObjectDisposedException) { }
        }

        public void Finish()
        {
            Finished = true;
            poke.Set();
        }

        public Task WaitAsync(TimeSpan timeout) => poke.WaitAsync(timeout);
    }
}
