using System.Text.Json;
using Npgsql;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Jobs in PostgreSQL, shared by any number of replicas. A claim locks the head of the queue and its batch-compatible
/// jobs with <c>FOR UPDATE SKIP LOCKED</c>, so concurrent replicas take disjoint jobs without waiting on each other;
/// every other change is one statement or one transaction fenced by the lease holder (status running, replica = caller).
/// Same schema and rules as <see cref="SqliteJobStore"/> (times in Unix ms from <see cref="TimeProvider"/>).
/// </summary>
public sealed class PostgresJobStore : IJobStore
{
    readonly NpgsqlDataSource source;
    readonly TimeProvider time;

    /// <param name="connectionString">An Npgsql connection string, or a postgres://user:password@host:port/db URL.</param>
    public PostgresJobStore(string connectionString, TimeProvider? time = null)
    {
        this.time = time ?? TimeProvider.System;
        source = NpgsqlDataSource.Create(ToConnectionString(connectionString));
        using var c = source.OpenConnection();
        // Two replicas starting together must not both create the schema: one holds the advisory lock while it does.
        Execute(c, null, """
            SELECT pg_advisory_lock(7264531);
            CREATE TABLE IF NOT EXISTS jobs (
                seq BIGSERIAL PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                owner TEXT NOT NULL,
                idempotency_key TEXT,
                status INTEGER NOT NULL,
                priority INTEGER NOT NULL,
                model TEXT NOT NULL,
                batch_key TEXT NOT NULL,
                batch TEXT,
                labels JSONB NOT NULL,
                webhook_url TEXT,
                request BYTEA NOT NULL,
                max_attempts INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                replica TEXT,
                lease_until BIGINT,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                step INTEGER NOT NULL DEFAULT 0,
                steps INTEGER NOT NULL DEFAULT 0,
                created BIGINT NOT NULL,
                started BIGINT,
                finished BIGINT,
                error_code TEXT,
                error_message TEXT,
                result BYTEA,
                image_count INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
            CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;
            CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
            CREATE TABLE IF NOT EXISTS job_images (
                job_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                mime TEXT NOT NULL,
                bytes BYTEA NOT NULL,
                seed BIGINT NOT NULL,
                width INTEGER NOT NULL,
                height INTEGER NOT NULL,
                PRIMARY KEY (job_id, idx));
            SELECT pg_advisory_unlock(7264531);
            """);
    }

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

    long Now => time.GetUtcNow().ToUnixTimeMilliseconds();

    T Write<T>(Func<NpgsqlConnection, NpgsqlTransaction, T> work)
    {
        using var c = source.OpenConnection();
        using var tx = c.BeginTransaction();
        var result = work(c, tx);
        tx.Commit();
        return result;
    }

    public (JobRecord Job, bool Created) Submit(JobSubmission s)
    {
        if (s.MaxAttempts < 1) throw new ArgumentOutOfRangeException(nameof(s), "max_attempts must be at least 1");
        while (true)
        {
            try { return SubmitOnce(s); }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && s.IdempotencyKey is not null)
            {
                // Another replica inserted the same key between our look and our insert: the next look finds its job.
            }
        }
    }

    (JobRecord, bool) SubmitOnce(JobSubmission s) => Write((c, tx) =>
    {
        long now = Now;
        if (s.IdempotencyKey is { } key)
        {
            var existing = Query(c, tx, "SELECT * FROM jobs WHERE owner = @owner AND idempotency_key = @key FOR UPDATE", p => { p("owner", s.Owner); p("key", key); });
            if (existing.Count == 1)
            {
                if (existing[0].Created.ToUnixTimeMilliseconds() > now - (long)SqliteJobStore.IdempotencyWindow.TotalMilliseconds) return (existing[0], false);
                Execute(c, tx, "UPDATE jobs SET idempotency_key = NULL WHERE id = @id", p => p("id", existing[0].Id));
            }
        }
        var job = Query(c, tx, """
            INSERT INTO jobs (id, owner, idempotency_key, status, priority, model, batch_key, batch, labels, webhook_url, request, max_attempts, created)
            VALUES (@id, @owner, @key, @status, @priority, @model, @batch_key, @batch, @labels::jsonb, @webhook, @request, @max, @now) RETURNING *
            """, p =>
        {
            p("id", JobRows.NewId()); p("owner", s.Owner); p("key", s.IdempotencyKey); p("status", (int)JobStatus.Queued); p("priority", s.Priority);
            p("model", s.Model); p("batch_key", s.BatchKey); p("batch", s.Batch); p("labels", JsonSerializer.Serialize(s.Labels));
            p("webhook", s.WebhookUrl); p("request", s.Request); p("max", s.MaxAttempts); p("now", now);
        })[0];
        return (job, true);
    });

    public JobRecord? Get(string id)
    {
        using var c = source.OpenConnection();
        return Query(c, null, "SELECT * FROM jobs WHERE id = @id", p => p("id", id)).SingleOrDefault();
    }

    public IReadOnlyList<JobRecord> List(JobQuery q)
    {
        var where = new List<string> { "seq > @after" };
        if (q.Status is not null) where.Add("status = @status");
        if (q.Batch is not null) where.Add("batch = @batch");
        if (q.Label is not null) where.Add("labels ->> @label_key = @label_value");
        using var c = source.OpenConnection();
        return Query(c, null, $"SELECT * FROM jobs WHERE {string.Join(" AND ", where)} ORDER BY seq LIMIT @limit", p =>
        {
            p("after", q.After); p("limit", Math.Max(0, q.Limit));
            if (q.Status is { } st) p("status", (int)st);
            if (q.Batch is { } b) p("batch", b);
            if (q.Label is { } l) { p("label_key", l.Key); p("label_value", l.Value); }
        });
    }

    public IReadOnlyDictionary<JobStatus, int> BatchCounts(string batch)
    {
        using var c = source.OpenConnection();
        using var cmd = Command(c, null, "SELECT status, COUNT(*) FROM jobs WHERE batch = @batch GROUP BY status", p => p("batch", batch));
        using var r = cmd.ExecuteReader();
        var counts = Enum.GetValues<JobStatus>().ToDictionary(s => s, _ => 0);
        while (r.Read()) counts[(JobStatus)r.GetInt32(0)] = (int)r.GetInt64(1);
        return counts;
    }

    public int QueuedCount(string? owner = null)
    {
        using var c = source.OpenConnection();
        using var cmd = Command(c, null, "SELECT COUNT(*) FROM jobs WHERE status = @q AND (@owner::text IS NULL OR owner = @owner::text)", p => { p("q", (int)JobStatus.Queued); p("owner", owner); });
        return Convert.ToInt32(cmd.ExecuteScalar());
    }

    public JobRecord? Cancel(string id) => Write((c, tx) =>
    {
        Execute(c, tx, "UPDATE jobs SET status = @cancelled, finished = @now WHERE id = @id AND status = @queued", p =>
            { p("cancelled", (int)JobStatus.Cancelled); p("now", Now); p("id", id); p("queued", (int)JobStatus.Queued); });
        Execute(c, tx, "UPDATE jobs SET cancel_requested = 1 WHERE id = @id AND status = @running", p => { p("id", id); p("running", (int)JobStatus.Running); });
        return Query(c, tx, "SELECT * FROM jobs WHERE id = @id", p => p("id", id)).SingleOrDefault();
    });

    public IReadOnlyList<JobRecord> Claim(string replica, IReadOnlyCollection<string> models, int max, TimeSpan lease)
    {
        if (max < 1 || models.Count == 0) return [];
        return Write((c, tx) =>
        {
            long now = Now;
            // The head of the queue, then the queued jobs that can share its batch; rows another replica is claiming are skipped, not waited for.
            return (IReadOnlyList<JobRecord>)Query(c, tx, """
                WITH head AS (
                    SELECT model, batch_key FROM jobs WHERE status = @queued AND model = ANY(@models)
                    ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED),
                picked AS (
                    SELECT j.id FROM jobs j JOIN head h ON j.model = h.model AND j.batch_key = h.batch_key
                    WHERE j.status = @queued ORDER BY j.priority DESC, j.seq LIMIT @max FOR UPDATE OF j SKIP LOCKED)
                UPDATE jobs SET status = @running, replica = @replica, lease_until = @until, attempts = attempts + 1,
                    started = COALESCE(started, @now), step = 0, steps = 0
                WHERE id IN (SELECT id FROM picked) RETURNING *
                """, p =>
            {
                p("queued", (int)JobStatus.Queued); p("models", models.ToArray()); p("max", max); p("running", (int)JobStatus.Running);
                p("replica", replica); p("until", now + (long)lease.TotalMilliseconds); p("now", now);
            }).OrderByDescending(j => j.Submission.Priority).ThenBy(j => j.Sequence).ToList();
        });
    }

    public JobRecord? Renew(string id, string replica, TimeSpan lease, int step, int steps)
    {
        using var c = source.OpenConnection();
        return Query(c, null, "UPDATE jobs SET lease_until = @until, step = @step, steps = @steps WHERE id = @id AND status = @running AND replica = @replica RETURNING *", p =>
            { p("until", Now + (long)lease.TotalMilliseconds); p("step", step); p("steps", steps); p("id", id); p("running", (int)JobStatus.Running); p("replica", replica); })
            .SingleOrDefault();
    }

    public bool Complete(string id, string replica, JobResult result) => Write((c, tx) =>
    {
        int n = Execute(c, tx, """
            UPDATE jobs SET status = @succeeded, finished = @now, lease_until = NULL, result = @result, image_count = @count, error_code = NULL, error_message = NULL
            WHERE id = @id AND status = @running AND replica = @replica
            """, p =>
        {
            p("succeeded", (int)JobStatus.Succeeded); p("now", Now); p("result", result.Document); p("count", result.Images.Count);
            p("id", id); p("running", (int)JobStatus.Running); p("replica", replica);
        });
        if (n == 0) return false;
        foreach (var img in result.Images)
            Execute(c, tx, "INSERT INTO job_images (job_id, idx, mime, bytes, seed, width, height) VALUES (@id, @idx, @mime, @bytes, @seed, @w, @h)", p =>
                { p("id", id); p("idx", img.Index); p("mime", img.MimeType); p("bytes", img.Bytes); p("seed", img.Seed); p("w", img.Width); p("h", img.Height); });
        return true;
    });

    public bool Fail(string id, string replica, JobError error, bool retryable)
    {
        using var c = source.OpenConnection();
        return Execute(c, null, """
            UPDATE jobs SET
                status = CASE WHEN @retryable AND attempts < max_attempts THEN @queued ELSE @failed END,
                finished = CASE WHEN @retryable AND attempts < max_attempts THEN NULL ELSE @now END,
                replica = CASE WHEN @retryable AND attempts < max_attempts THEN NULL ELSE replica END,
                lease_until = NULL, error_code = @code, error_message = @message
            WHERE id = @id AND status = @running AND replica = @replica
            """, p =>
        {
            p("retryable", retryable); p("queued", (int)JobStatus.Queued); p("failed", (int)JobStatus.Failed); p("now", Now);
            p("code", error.Code); p("message", error.Message); p("id", id); p("running", (int)JobStatus.Running); p("replica", replica);
        }) == 1;
    }

    public bool Cancelled(string id, string replica)
    {
        using var c = source.OpenConnection();
        return Execute(c, null, "UPDATE jobs SET status = @cancelled, finished = @now, lease_until = NULL WHERE id = @id AND status = @running AND replica = @replica", p =>
            { p("cancelled", (int)JobStatus.Cancelled); p("now", Now); p("id", id); p("running", (int)JobStatus.Running); p("replica", replica); }) == 1;
    }

    public int ReclaimExpired()
    {
        using var c = source.OpenConnection();
        return Execute(c, null, """
            UPDATE jobs SET
                status = CASE WHEN cancel_requested = 1 THEN @cancelled WHEN attempts < max_attempts THEN @queued ELSE @failed END,
                finished = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN @now ELSE NULL END,
                error_code = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts THEN 'lease_expired' ELSE error_code END,
                error_message = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                    THEN 'the replica running it stopped answering (' || attempts || ' of ' || max_attempts || ' attempts)' ELSE error_message END,
                lease_until = NULL
            WHERE status = @running AND lease_until < @now
            """, p => { p("cancelled", (int)JobStatus.Cancelled); p("queued", (int)JobStatus.Queued); p("failed", (int)JobStatus.Failed); p("now", Now); p("running", (int)JobStatus.Running); });
    }

    public int DeleteFinishedBefore(DateTimeOffset before) => Write((c, tx) =>
    {
        void P(Action<string, object?> p) { p("before", before.ToUnixTimeMilliseconds()); p("queued", (int)JobStatus.Queued); p("running", (int)JobStatus.Running); }
        const string Finished = "status NOT IN (@queued, @running) AND finished < @before";
        Execute(c, tx, $"DELETE FROM job_images WHERE job_id IN (SELECT id FROM jobs WHERE {Finished})", P);
        return Execute(c, tx, $"DELETE FROM jobs WHERE {Finished}", P);
    });

    public JobImage? GetImage(string id, int index)
    {
        using var c = source.OpenConnection();
        using var cmd = Command(c, null, "SELECT mime, bytes, seed, width, height FROM job_images WHERE job_id = @id AND idx = @idx", p => { p("id", id); p("idx", index); });
        using var r = cmd.ExecuteReader();
        return r.Read() ? new JobImage(index, r.GetString(0), (byte[])r[1], r.GetInt64(2), r.GetInt32(3), r.GetInt32(4)) : null;
    }

    static NpgsqlCommand Command(NpgsqlConnection c, NpgsqlTransaction? tx, string sql, Action<Action<string, object?>>? bind)
    {
        var cmd = new NpgsqlCommand(sql, c, tx);
        bind?.Invoke((name, value) => cmd.Parameters.AddWithValue(name, value ?? DBNull.Value));
        return cmd;
    }

    static int Execute(NpgsqlConnection c, NpgsqlTransaction? tx, string sql, Action<Action<string, object?>>? bind = null)
    {
        using var cmd = Command(c, tx, sql, bind);
        return cmd.ExecuteNonQuery();
    }

    static List<JobRecord> Query(NpgsqlConnection c, NpgsqlTransaction? tx, string sql, Action<Action<string, object?>>? bind)
    {
        using var cmd = Command(c, tx, sql, bind);
        using var r = cmd.ExecuteReader();
        var jobs = new List<JobRecord>();
        while (r.Read()) jobs.Add(JobRows.Read(r));
        return jobs;
    }

    public void Dispose() => source.Dispose();
}
