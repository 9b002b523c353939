using System.Data.Common;
using System.Text.Json;

namespace InferenceServer.Server.Jobs;

/// <summary>A <c>jobs</c> row as a <see cref="JobRecord"/>: the one mapping both stores share (same column names; times in Unix ms).</summary>
internal static class JobRows
{
    public static JobRecord Read(DbDataReader r)
    {
        string? S(string col) => r[col] is string s ? s : null;
        long? L(string col) => r[col] is DBNull ? null : Convert.ToInt64(r[col]);
        DateTimeOffset? T(string col) => L(col) is { } ms ? DateTimeOffset.FromUnixTimeMilliseconds(ms) : null;
        // The request is selected only by claims (SqlJobStore.Columns leaves it out); elsewhere it reads as empty.
        byte[] request = HasRequest(r) ? (byte[])r["request"] : [];
        var submission = new JobSubmission(S("owner")!, request, S("model")!, S("batch_key")!)
        {
            Priority = (int)L("priority")!.Value,
            IdempotencyKey = S("idempotency_key"),
            WebhookUrl = S("webhook_url"),
            Labels = JsonSerializer.Deserialize<Dictionary<string, string>>(S("labels")!)!,
            Batch = S("batch"),
            MaxAttempts = (int)L("max_attempts")!.Value,
            Steps = (int)L("steps")!.Value,
        };
        return new JobRecord(S("id")!, (JobStatus)L("status")!.Value, submission)
        {
            Attempts = (int)L("attempts")!.Value,
            Replica = S("replica"),
            LeaseUntil = T("lease_until"),
            CancelRequested = L("cancel_requested") == 1,
            Step = (int)L("step")!.Value,
            Steps = (int)L("steps")!.Value,
            Created = T("created")!.Value,
            Started = T("started"),
            Finished = T("finished"),
            Error = S("error_code") is { } code ? new JobError(code, S("error_message") ?? "") : null,
            Result = r["result"] as byte[],
            ImageCount = (int)L("image_count")!.Value,
            Sequence = L("seq")!.Value,
            Expired = L("expired") == 1,
            ResultBytes = L("result_bytes") ?? 0,
            Webhook = L("webhook_state") is { } w ? (WebhookState)w : null,
            WebhookDeliveries = S("webhook_log") is { Length: > 2 } log ? JsonSerializer.Deserialize<List<WebhookDelivery>>(log, Json)! : [],
        };
    }

    static bool HasRequest(DbDataReader r)
    {
        for (int i = 0; i < r.FieldCount; i++)
            if (r.GetName(i) == "request") return true;
        return false;
    }

    /// <summary>How stored JSON columns are written (webhook log).</summary>
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>A new job id: "job_" and 24 hex digits (96 random bits).</summary>
    public static string NewId() => "job_" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(12));
}
