using InferenceServer.Server.Jobs;
using Prometheus;

namespace InferenceServer.Server.Observability;

/// <summary>
/// Durable-job series: jobs per state and queued jobs per model and priority (from the shared store, so every replica
/// reports the whole queue: an autoscaler reads any one, or the database, see deploy/), and this replica's claims, lease
/// expiries it reclaimed, finished runs and webhook deliveries.
/// </summary>
public sealed class JobMetrics
{
    readonly Gauge jobs, queued;
    readonly Histogram claimSeconds;
    readonly Counter submitted, finished, leaseExpiries, webhooks;
    HashSet<(string, string)> queuedLabels = [];

    internal JobMetrics(MetricFactory f)
    {
        jobs = f.CreateGauge("inference_jobs", "Durable jobs in the store per state (expired ones excluded).", new GaugeConfiguration { LabelNames = ["state"] });
        queued = f.CreateGauge("inference_jobs_queued", "Queued durable jobs per model and priority: the autoscaling signal.",
            new GaugeConfiguration { LabelNames = ["model", "priority"] });
        claimSeconds = f.CreateHistogram("inference_job_claim_seconds", "Time of one claim transaction (a batch of compatible jobs) by this replica.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0005, 2, 16) });
        submitted = f.CreateCounter("inference_jobs_submitted_total", "Durable jobs submitted through this replica (idempotent repeats excluded).");
        finished = f.CreateCounter("inference_jobs_finished_total", "Job runs this replica ended, by outcome.", new CounterConfiguration { LabelNames = ["outcome"] });
        leaseExpiries = f.CreateCounter("inference_job_lease_expiries_total", "Jobs whose replica stopped renewing its lease, returned to the queue (or failed) by this replica.");
        webhooks = f.CreateCounter("inference_webhook_deliveries_total", "Webhook delivery attempts by result (delivered, failed, gave_up).",
            new CounterConfiguration { LabelNames = ["result"] });
    }

    public void Submitted(int count) => submitted.Inc(count);
    public void Claimed(double seconds) => claimSeconds.Observe(seconds);
    public void Finished(string outcome) => finished.WithLabels(outcome).Inc();
    public void LeasesExpired(int count) => leaseExpiries.Inc(count);
    public void Webhook(string result) => webhooks.WithLabels(result).Inc();

    /// <summary>Sets the store-wide gauges; label sets that vanished (a model's queue drained) go to 0.</summary>
    public void Store(JobStats stats)
    {
        foreach (var (status, n) in stats.ByStatus) jobs.WithLabels(JobQueue.Name(status)).Set(n);
        var now = new HashSet<(string, string)>();
        foreach (var (model, priority, n) in stats.Queued)
        {
            var key = (model, priority.ToString(System.Globalization.CultureInfo.InvariantCulture));
            now.Add(key);
            queued.WithLabels(key.model, key.Item2).Set(n);
        }
        foreach (var gone in queuedLabels.Except(now)) queued.WithLabels(gone.Item1, gone.Item2).Set(0);
        queuedLabels = now;
    }
}
