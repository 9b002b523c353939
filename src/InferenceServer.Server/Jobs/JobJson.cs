using System.Text.Json;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// A job as JSON: the HTTP API's body (<c>GET /v1/jobs/{id}</c>, events, lists) and the webhook payload, one writer for
/// all (docs/jobs-api.md). Times are ISO 8601 UTC; absent values are omitted.
/// </summary>
public static class JobJson
{
    /// <param name="baseUrl">Prefix of <c>status_url</c> and image urls ("" for paths relative to the server).</param>
    /// <param name="retention">How long finished jobs are kept (for <c>expires_at</c>).</param>
    public static void Write(Utf8JsonWriter w, JobView view, string baseUrl, TimeSpan retention)
    {
        var j = view.Job;
        var s = j.Submission;
        w.WriteStartObject();
        w.WriteString("id", j.Id);
        w.WriteString("object", "job");
        w.WriteString("status", JobQueue.Name(j.Status));
        w.WriteString("status_url", $"{baseUrl}/v1/jobs/{j.Id}");
        w.WriteString("model", s.Model);
        w.WriteNumber("priority", s.Priority);
        if (s.Batch is not null) w.WriteString("batch", s.Batch);
        w.WriteStartObject("labels");
        foreach (var (k, v) in s.Labels) w.WriteString(k, v);
        w.WriteEndObject();
        if (j.Status == JobStatus.Queued) w.WriteNumber("queue_position", view.QueuePosition);
        if (j.Status == JobStatus.Running || j.Steps > 0)
        {
            w.WriteStartObject("progress");
            w.WriteNumber("step", j.Step);
            w.WriteNumber("steps", j.Steps);
            w.WriteEndObject();
        }
        if (j.Replica is not null) w.WriteString("replica", j.Replica);
        w.WriteNumber("attempts", j.Attempts);
        w.WriteNumber("max_attempts", s.MaxAttempts);
        if (j.CancelRequested && !j.IsTerminal) w.WriteBoolean("cancel_requested", true);
        w.WriteString("created_at", j.Created.UtcDateTime);
        if (j.Started is { } started) w.WriteString("started_at", started.UtcDateTime);
        if (j.Finished is { } finished)
        {
            w.WriteString("finished_at", finished.UtcDateTime);
            w.WriteString("expires_at", (finished + retention).UtcDateTime);
        }
        if (j.Error is { } e && j.Status == JobStatus.Failed)
        {
            w.WriteStartObject("error");
            w.WriteString("code", e.Code);
            w.WriteString("message", e.Message);
            w.WriteEndObject();
        }
        if (j.Status == JobStatus.Succeeded && JobResultDocument.Parse(j.Result) is { } r) WriteResult(w, j.Id, r, baseUrl);
        if (s.WebhookUrl is not null)
        {
            w.WriteStartObject("webhook");
            w.WriteString("url", s.WebhookUrl);
            w.WriteString("state", j.Webhook switch { WebhookState.Pending => "pending", WebhookState.Delivered => "delivered", WebhookState.GaveUp => "failed", _ => "waiting" });
            w.WriteStartArray("deliveries");
            foreach (var d in j.WebhookDeliveries)
            {
                w.WriteStartObject();
                w.WriteString("at", d.At.UtcDateTime);
                if (d.Status is { } code) w.WriteNumber("status", code);
                if (d.Error is not null) w.WriteString("error", d.Error);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    static void WriteResult(Utf8JsonWriter w, string id, JobResultDocument r, string baseUrl)
    {
        w.WriteStartObject("result");
        w.WriteString("model", r.Model);
        w.WriteNumber("steps", r.Steps);
        w.WriteNumber("batch_size", r.BatchSize);
        w.WriteStartArray("images");
        foreach (var i in r.Images)
        {
            w.WriteStartObject();
            w.WriteNumber("index", i.Index);
            w.WriteString("url", $"{baseUrl}/v1/jobs/{id}/images/{i.Index}");
            w.WriteString("mime_type", i.MimeType);
            w.WriteNumber("width", i.Width);
            w.WriteNumber("height", i.Height);
            w.WriteNumber("seed", i.Seed);
            w.WriteNumber("bytes", i.Bytes);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartObject("timings");
        w.WriteNumber("total_ms", r.TotalMs);
        w.WriteNumber("queue_ms", r.QueueMs);
        foreach (var (stage, ms) in r.StagesMs) w.WriteNumber(stage + "_ms", ms);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    public static byte[] ToBytes(JobView view, string baseUrl, TimeSpan retention)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer)) Write(w, view, baseUrl, retention);
        return buffer.ToArray();
    }
}
