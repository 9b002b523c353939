using System.Text;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Delivers job webhooks. The schedule lives in the store, not in memory: a terminal state arms the job's webhook in the
/// same transaction, any replica claims due deliveries (<see cref="IJobStore.ClaimWebhooks"/>), sends one signed POST
/// (<see cref="WebhookSender"/>) and records it with the next try's time (<see cref="JobOptions.WebhookRetryDelays"/>),
/// so retries survive the replica that started them. That is why no in-process retry library (Polly) runs them: a
/// retry that must outlive the process has to be a row, not a delegate. Each try uses the same <c>webhook-id</c>
/// (the job id), so a receiver can drop duplicates.
/// </summary>
public sealed class WebhookDispatcher(JobQueue queue, IOptions<ServerOptions> options, ServerMetrics metrics, ILogger<WebhookDispatcher> log) : BackgroundService
{
    readonly JobOptions o = options.Value.Jobs;

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        if (string.IsNullOrEmpty(o.WebhookSecret)) return;             // submissions with a webhook_url are refused then
        using var sender = new WebhookSender(o.WebhookSecret, new WebhookGuard(o.WebhookAllow), o.WebhookTimeout);
        var store = queue.Store;
        var signal = new WakeSignal();
        void OnChanged(string _) => signal.Set();
        store.Changed += OnChanged;
        // Due retries are found by looking again at least this often.
        var poll = TimeSpan.FromTicks(Math.Min(o.PollInterval.Ticks, o.WebhookRetryDelays.Count > 0 ? o.WebhookRetryDelays.Min().Ticks : o.PollInterval.Ticks));
        try
        {
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    var due = await Task.Run(() => store.ClaimWebhooks(16, o.WebhookTimeout + TimeSpan.FromSeconds(30)), ct).ConfigureAwait(false);
                    await Task.WhenAll(due.Select(job => DeliverAsync(sender, store, job, ct))).ConfigureAwait(false);
                    if (due.Count > 0) continue;
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
                catch (Exception e) { log.LogWarning("webhooks: job store unavailable ({Message})", e.Message); }
                try { await signal.WaitAsync(poll, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { break; }
            }
        }
        finally { store.Changed -= OnChanged; }
    }

    async Task DeliverAsync(WebhookSender sender, IJobStore store, JobRecord job, CancellationToken ct)
    {
        var json = Encoding.UTF8.GetString(JobJson.ToBytes(new JobView(job, 0), options.Value.Files.PublicBaseUrl?.TrimEnd('/') ?? "", o.Retention));
        var delivery = await sender.SendAsync(job.Submission.WebhookUrl!, job.Id, json, ct).ConfigureAwait(false);
        int tries = job.WebhookDeliveries.Count + 1;
        TimeSpan? retry = delivery.Succeeded || tries > o.WebhookRetryDelays.Count ? null : o.WebhookRetryDelays[tries - 1];
        await Task.Run(() => store.RecordDelivery(job.Id, delivery, retry), CancellationToken.None).ConfigureAwait(false);
        string result = delivery.Succeeded ? "delivered" : retry is null ? "gave_up" : "failed";
        metrics.Jobs.Webhook(result);
        if (!delivery.Succeeded)
            log.LogInformation("job {Id}: webhook try {Try} {Result}: {Why}", job.Id, tries, result == "gave_up" ? "failed, giving up" : $"failed, next in {retry!.Value.TotalSeconds:0.#} s",
                delivery.Status is { } s ? $"HTTP {s}" : delivery.Error);
    }
}
