using System.Data.Common;
using Npgsql;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Jobs in PostgreSQL, shared by any number of replicas. A claim locks the head of the queue and its batch-compatible
/// jobs with <c>FOR UPDATE SKIP LOCKED</c>, so concurrent replicas take disjoint jobs without waiting on each other.
/// Every change is announced with <c>NOTIFY inference_jobs, 'ID'</c> at commit; one connection per process LISTENs and
/// raises <see cref="IJobStore.Changed"/>, so idle replicas wake on new work and watchers see other replicas' progress
/// without polling delay. The listener reconnects when the database restarts, and announces "*" (anything may have changed).
/// </summary>
public sealed class PostgresJobStore : SqlJobStore
{
    const string Channel = "inference_jobs";
    readonly NpgsqlDataSource source;
    readonly CancellationTokenSource stop = new();
    readonly Task listener;

    /// <param name="connectionString">An Npgsql connection string, or a postgres://user:password@host:port/db URL.</param>
    public PostgresJobStore(string connectionString, TimeProvider? time = null) : base(time)
    {
        source = NpgsqlDataSource.Create(ToConnectionString(connectionString));
        using var c = Connect();
        // Two replicas starting together must not both create the schema: one holds the advisory lock while it does.
        Execute(c, null, "SELECT pg_advisory_lock(7264531);\n" + Schema(serial: "BIGSERIAL PRIMARY KEY", bigint: "BIGINT", bytes: "BYTEA") + "\nSELECT pg_advisory_unlock(7264531);");
        listener = Task.Run(() => Listen(stop.Token));
    }

    async Task Listen(CancellationToken ct)
    {
        bool first = true;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await using var c = await source.OpenConnectionAsync(ct).ConfigureAwait(false);
                c.Notification += (_, e) => Raise(e.Payload);
                await using (var cmd = new NpgsqlCommand($"LISTEN {Channel}", c)) await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
                if (!first) Raise("*");             // notifications sent while disconnected are lost: everyone looks again
                first = false;
                while (!ct.IsCancellationRequested) await c.WaitAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception)
            {
                // The database restarted or the network dropped: retry; writers meanwhile fail and are retried by their callers.
                try { await Task.Delay(TimeSpan.FromMilliseconds(500), ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
            }
        }
    }

    protected override void Notify(DbConnection c, DbTransaction tx, string id) =>
        Execute(c, tx, $"SELECT pg_notify('{Channel}', @id)", p => p("id", id));

    /// <summary>A postgres:// URL as an Npgsql connection string; anything else is taken as one already.</summary>
    public static string ToConnectionString(string value)
    {
        if (!value.StartsWith("postgres://", StringComparison.Ordinal) && !value.StartsWith("postgresql://", StringComparison.Ordinal)) return value;
        var uri = new Uri(value);
        var b = new NpgsqlConnectionStringBuilder { Host = uri.Host, Port = uri.Port > 0 ? uri.Port : 5432, Database = uri.AbsolutePath.Trim('/') };
        var user = uri.UserInfo.Split(':', 2);
        if (user[0].Length > 0) b.Username = Uri.UnescapeDataString(user[0]);
        if (user.Length > 1) b.Password = Uri.UnescapeDataString(user[1]);
        return b.ConnectionString;
    }

    protected override DbConnection Connect() => source.OpenConnection();

    protected override string JsonType => "JSONB";

    protected override string SkipLocked => " FOR UPDATE SKIP LOCKED";

    protected override void LockOwner(DbConnection c, DbTransaction tx, string owner) =>
        Execute(c, tx, "SELECT pg_advisory_xact_lock(7264532, hashtext(@owner))", p => p("owner", owner));

    protected override bool IsUniqueViolation(Exception e) => e is PostgresException { SqlState: PostgresErrorCodes.UniqueViolation };

    protected override List<JobRecord> ClaimRows(DbConnection c, DbTransaction tx, string replica, IReadOnlyCollection<string> models, int max, long until) =>
        Query(c, tx, $"""
            WITH head AS (
                SELECT model, batch_key FROM jobs WHERE status = @queued AND model = ANY(@models)
                ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED),
            picked AS (
                SELECT j.id FROM jobs j JOIN head h ON j.model = h.model AND j.batch_key = h.batch_key
                WHERE j.status = @queued ORDER BY j.priority DESC, j.seq LIMIT @max FOR UPDATE OF j SKIP LOCKED)
            UPDATE jobs SET {LeaseSet} WHERE id IN (SELECT id FROM picked) RETURNING *
            """, p =>
        {
            p("queued", (int)JobStatus.Queued); p("models", models.ToArray()); p("max", max); p("running", (int)JobStatus.Running);
            p("replica", replica); p("until", until); p("now", Now);
        }).OrderByDescending(j => j.Submission.Priority).ThenBy(j => j.Sequence).ToList();

    public override void Dispose()
    {
        stop.Cancel();
        try { listener.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
        source.Dispose();
        stop.Dispose();
    }
}
