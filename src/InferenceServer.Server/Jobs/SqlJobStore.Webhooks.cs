using System.Data.Common;
using System.Text.Json;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Webhook deliveries, kept in the job's row: armed by the transaction that ends the job, claimed by one replica at a
/// time (the due time pushed out is the claim), each try appended to <c>webhook_log</c> with the next due time.
/// </summary>
public abstract partial class SqlJobStore
{
    /// <summary>Jobs that just reached a terminal state with a webhook get their first delivery due now (same transaction).</summary>
    void ArmWebhooks(DbConnection c, DbTransaction tx) =>
        Execute(c, tx, "UPDATE jobs SET webhook_state = @pending, webhook_next = @now WHERE webhook_state = @waiting AND status IN (@s, @f, @c)", p =>
        {
            p("pending", (int)WebhookState.Pending); p("now", Now); p("waiting", (int)WebhookState.Waiting);
            p("s", (int)JobStatus.Succeeded); p("f", (int)JobStatus.Failed); p("c", (int)JobStatus.Cancelled);
        });

    public IReadOnlyList<JobRecord> ClaimWebhooks(int max, TimeSpan hold) => Write((c, tx) =>
    {
        long now = Now;
        var ids = Ids(c, tx, $"SELECT id FROM jobs WHERE webhook_state = @pending AND webhook_next <= @now AND expired = 0 ORDER BY webhook_next LIMIT @max{SkipLocked}",
            p => { p("pending", (int)WebhookState.Pending); p("now", now); p("max", max); });
        // Pushing the due time out is the claim: no other replica sends it meanwhile; a replica that dies leaves it due again after the hold.
        foreach (var id in ids)
            Execute(c, tx, "UPDATE jobs SET webhook_next = @until WHERE id = @id", p => { p("until", now + (long)hold.TotalMilliseconds); p("id", id); });
        return ids.Select(id => Row(c, tx, id)!).ToList();
    });

    public void RecordDelivery(string id, WebhookDelivery delivery, TimeSpan? retryAfter) => WriteJob(id, (c, tx) =>
    {
        using var cmd = Command(c, tx, "SELECT webhook_log FROM jobs WHERE id = @id", p => p("id", id));
        if (cmd.ExecuteScalar() is not string text) return 0;
        var log = JsonSerializer.Deserialize<List<WebhookDelivery>>(text, JobRows.Json) ?? [];
        log.Add(delivery);
        var state = delivery.Succeeded ? WebhookState.Delivered : retryAfter is null ? WebhookState.GaveUp : WebhookState.Pending;
        return Execute(c, tx, "UPDATE jobs SET webhook_log = @log, webhook_tries = webhook_tries + 1, webhook_state = @state, webhook_next = @next WHERE id = @id", p =>
        {
            p("log", JsonSerializer.Serialize(log, JobRows.Json)); p("state", (int)state); p("id", id);
            p("next", retryAfter is { } wait ? Now + (long)wait.TotalMilliseconds : null);
        });
    });
}
