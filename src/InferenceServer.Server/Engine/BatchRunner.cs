using System.Diagnostics;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Logging;

namespace InferenceServer.Server.Engine;

/// <summary>
/// The engine worker's step: one batch through the model's pipeline, then each job completed with its result or with the
/// error the front ends map (cancelled, invalid argument, out of device memory with Retry-After, internal). Runs on the
/// engine thread only; the scheduler owns admission, the queue and which jobs form a batch.
/// </summary>
public sealed class BatchRunner(ILogger log, ServerMetrics metrics, TimeSpan retryAfter)
{
    /// <summary>Runs one batch (jobs of one model and batch key) and completes every job of it; false when all were already cancelled.</summary>
    public bool Run(IReadOnlyList<Job> batch)
    {
        var live = batch.Where(j => !j.Token.IsCancellationRequested).ToList();
        foreach (var j in batch.Except(live)) j.Completion.TrySetCanceled(j.Token);
        if (live.Count == 0) return false;
        var model = live[0].Model;
        int images = live.Sum(j => j.Prepared.Count);
        metrics.Batch(live.Count, images);
        var started = Stopwatch.StartNew();
        foreach (var j in live) j.QueueMilliseconds = j.Admitted.Elapsed.TotalMilliseconds;
        var entries = live.Select(j => new BatchEntry(j.Prepared, j.Token, j.Request.PreviewEvery)).ToList();
        IReadOnlyList<BatchOutcome> outcomes;
        try
        {
            outcomes = model.Pipeline.GenerateBatch(entries, p => SafeEvent(live[p.Entry], new JobEvent.Progress(p.Step + 1, p.Steps, p.Preview?.Bytes)));
        }
        catch (Exception e)
        {
            outcomes = live.Select(_ => new BatchOutcome(null, e)).ToList();
        }
        log.LogInformation("batch of {Requests} requests / {Images} images ({Width}x{Height}, {Steps} steps) in {Ms:0} ms: {Ids}",
            live.Count, images, live[0].Prepared.Width, live[0].Prepared.Height, live[0].Prepared.Steps, started.Elapsed.TotalMilliseconds,
            string.Join(",", live.Select(j => j.Request.RequestId)));
        for (int i = 0; i < live.Count; i++)
        {
            var job = live[i];
            var o = outcomes[i];
            if (o.Result is { } r)
            {
                metrics.Completed(job.Request.Origin, r, job.QueueMilliseconds);
                job.Completion.TrySetResult(new JobResult(r, model.Name, job.Request.RequestId, job.QueueMilliseconds,
                    job.Admitted.Elapsed.TotalMilliseconds, live.Count, images));
            }
            else if (o.Error is OperationCanceledException) job.Completion.TrySetCanceled(job.Token);
            else if (o.Error is RequestException re) job.Completion.TrySetException(ServiceException.FromRequest(re));
            else if (o.Error is ImageDecodeException de) job.Completion.TrySetException(new ServiceException(ErrorKind.InvalidArgument, $"image: {de.Message}", "image", inner: de));
            else if (IsOutOfMemory(o.Error))
            {
                log.LogWarning(o.Error, "request {Id}: out of device memory", job.Request.RequestId);
                job.Completion.TrySetException(new ServiceException(ErrorKind.ResourceExhausted,
                    "the device ran out of memory for this request; retry with a smaller size or n", retryAfter: retryAfter, inner: o.Error));
            }
            else
            {
                log.LogError(o.Error, "request {Id} failed", job.Request.RequestId);
                job.Completion.TrySetException(new ServiceException(ErrorKind.Internal, $"generation failed (request {job.Request.RequestId}): {o.Error?.Message}", inner: o.Error));
            }
        }
        if (outcomes.Any(o => IsOutOfMemory(o.Error))) GC.Collect();
        return true;
    }

    static bool IsOutOfMemory(Exception? e) =>
        e is OutOfMemoryException || (e?.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase) ?? false);

    /// <summary>A job's event handler, whose failure is logged and never stops the engine.</summary>
    public void SafeEvent(Job job, JobEvent e)
    {
        try { job.OnEvent?.Invoke(e); }
        catch (Exception ex) { log.LogWarning(ex, "request {Id}: event handler failed", job.Request.RequestId); }
    }
}
