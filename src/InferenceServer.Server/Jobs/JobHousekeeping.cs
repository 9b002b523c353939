using InferenceServer.Server.Hosting;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Every replica, on a timer: expires finished jobs past <see cref="JobOptions.Retention"/> or beyond
/// <see cref="JobOptions.MaxResultBytes"/> (tombstones kept a week, so a GET says "expired"), and refreshes the store-wide
/// job gauges. Both are idempotent, so replicas doing it at once is harmless.
/// </summary>
public sealed class JobHousekeeping(JobQueue queue, IOptions<ServerOptions> options, ServerMetrics metrics, ILogger<JobHousekeeping> log, TimeProvider? time = null) : BackgroundService
{
    /// <summary>How long a tombstone of an expired job stays, past its retention.</summary>
    public static readonly TimeSpan TombstoneFor = TimeSpan.FromDays(7);

    protected override async Task ExecuteAsync(CancellationToken ct)
    {
        var o = options.Value.Jobs;
        var every = TimeSpan.FromTicks(Math.Clamp(o.Retention.Ticks / 10, TimeSpan.FromMilliseconds(100).Ticks, TimeSpan.FromSeconds(5).Ticks));
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var now = (time ?? TimeProvider.System).GetUtcNow();
                int expired = await Task.Run(() => queue.Store.Expire(now - o.Retention, o.MaxResultBytes, now - o.Retention - TombstoneFor), ct).ConfigureAwait(false);
                if (expired > 0) log.LogInformation("expired {Count} finished jobs (retention {Hours:0.##} h, result budget {Bytes:N0} bytes)", expired, o.Retention.TotalHours, o.MaxResultBytes);
                metrics.Jobs.Store(await Task.Run(queue.Store.Stats, ct).ConfigureAwait(false));
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
            catch (Exception e) { log.LogDebug("job housekeeping: {Message}", e.Message); }
            try { await Task.Delay(every, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
        }
    }
}
