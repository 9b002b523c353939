using System.Data.Common;
using System.Text.Json;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// The durable queue in SQL, one statement set for both databases (SQLite and PostgreSQL read the same <c>@name</c>
/// parameters, <c>CAST</c> and <c>-&gt;&gt;</c>): a subclass gives the connection, the write transaction, the schema and
/// the claim, which is where the two differ. Every change runs in one transaction; changes to a running job are fenced
/// by its lease holder (status running and replica = caller). Times are Unix milliseconds from <see cref="TimeProvider"/>.
/// </summary>
public abstract partial class SqlJobStore(TimeProvider? time) : IJobStore
{
    /// <summary>An idempotency key returns its first job for this long after submission.</summary>
    public static readonly TimeSpan IdempotencyWindow = TimeSpan.FromHours(24);

    protected long Now => (time ?? TimeProvider.System).GetUtcNow().ToUnixTimeMilliseconds();

    /// <summary>The tables and indexes, with the database's names for an auto-increment key, a 64-bit integer and bytes.</summary>
    protected string Schema(string serial, string bigint, string bytes) => $"""
        CREATE TABLE IF NOT EXISTS jobs (
            seq {serial},
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            idempotency_key TEXT,
            status INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            model TEXT NOT NULL,
            batch_key TEXT NOT NULL,
            batch TEXT,
            labels {JsonType} NOT NULL,
            webhook_url TEXT,
            request {bytes} NOT NULL,
            max_attempts INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            replica TEXT,
            lease_until {bigint},
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            step INTEGER NOT NULL DEFAULT 0,
            steps INTEGER NOT NULL DEFAULT 0,
            created {bigint} NOT NULL,
            started {bigint},
            finished {bigint},
            error_code TEXT,
            error_message TEXT,
            result {bytes},
            image_count INTEGER NOT NULL DEFAULT 0,
            result_bytes {bigint} NOT NULL DEFAULT 0,
            expired INTEGER NOT NULL DEFAULT 0,
            webhook_state INTEGER,
            webhook_tries INTEGER NOT NULL DEFAULT 0,
            webhook_next {bigint},
            webhook_log TEXT NOT NULL DEFAULT '[]');
        CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
        CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;
        CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_state, webhook_next) WHERE webhook_state IS NOT NULL;
        CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished) WHERE finished IS NOT NULL;
        CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
        CREATE TABLE IF NOT EXISTS job_images (
            job_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            mime TEXT NOT NULL,
            bytes {bytes} NOT NULL,
            seed {bigint} NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            PRIMARY KEY (job_id, idx));
        """;

    /// <summary>
    /// Every column but <c>request</c> (up to the request size limit with references): what reads, watchers and heartbeats
    /// select. Only a claim, which runs the request, reads it.
    /// </summary>
    protected const string Columns = """
        seq, id, owner, idempotency_key, status, priority, model, batch_key, batch, labels, webhook_url, max_attempts, attempts, replica,
        lease_until, cancel_requested, step, steps, created, started, finished, error_code, error_message, result, image_count, result_bytes,
        expired, webhook_state, webhook_tries, webhook_next, webhook_log
        """;

    /// <summary>An open connection.</summary>
    protected abstract DbConnection Connect();

    /// <summary>The SQL type the labels column is written as (TEXT, JSONB).</summary>
    protected abstract string JsonType { get; }

    /// <summary>
    /// Leases the head of the queue among <paramref name="models"/> and up to <paramref name="max"/> - 1 queued jobs with its
    /// model and batch key (inside <paramref name="tx"/>); returns them updated, head first.
    /// </summary>
    protected abstract List<JobRecord> ClaimRows(DbConnection c, DbTransaction tx, string replica, IReadOnlyCollection<string> models, int max, long until);

    /// <summary>True when <paramref name="e"/> is a unique-index violation (a concurrent submit of the same idempotency key).</summary>
    protected virtual bool IsUniqueViolation(Exception e) => false;

    /// <summary>Runs <paramref name="work"/> in one write transaction and commits it.</summary>
    protected virtual T Write<T>(Func<DbConnection, DbTransaction, T> work)
    {
        using var c = Connect();
        using var tx = c.BeginTransaction();
        var result = work(c, tx);
        tx.Commit();
        return result;
    }

    public event Action<string>? Changed;

    /// <summary>Tells this process's listeners (and, where the database can, other replicas': <see cref="Notify"/>) that job <paramref name="id"/> changed.</summary>
    protected void Raise(string id)
    {
        try { Changed?.Invoke(id); }
        catch (Exception) { }   // a listener's failure must not undo a committed change in the caller's eyes
    }

    /// <summary>Inside the write transaction: tells other processes about <paramref name="id"/> at commit (PostgreSQL NOTIFY); nothing by default.</summary>
    protected virtual void Notify(DbConnection c, DbTransaction tx, string id) { }

    /// <summary>A write about one job: committed, then announced.</summary>
    T WriteJob<T>(string id, Func<DbConnection, DbTransaction, T> work)
    {
        var result = Write((c, tx) => { var r = work(c, tx); Notify(c, tx, id); return r; });
        Raise(id);
        return result;
    }

    public (JobRecord Job, bool Created) Submit(JobSubmission s) => SubmitMany([s])[0];

    /// <summary>Announced to runners once per submission call ("new work"); watchers follow ids, and no one watches a job before it exists.</summary>
    public const string NewWork = "+";

    public IReadOnlyList<(JobRecord Job, bool Created)> SubmitMany(IReadOnlyList<JobSubmission> submissions, int maxQueuedPerOwner = int.MaxValue)
    {
        if (submissions.Any(s => s.MaxAttempts < 1)) throw new ArgumentOutOfRangeException(nameof(submissions), "max_attempts must be at least 1");
        var owners = submissions.Select(s => s.Owner).Distinct().Order(StringComparer.Ordinal).ToList();
        while (true)
        {
            try
            {
                // One transaction for the call: one commit (one fsync) for a thousand jobs, and all or none are queued.
                var submitted = Write((c, tx) =>
                {
                    foreach (var owner in owners) LockOwner(c, tx, owner);
                    var r = submissions.Select(s => SubmitIn(c, tx, s)).ToList();
                    // Counted after the inserts, in the same transaction: exact, and idempotent repeats add nothing.
                    if (maxQueuedPerOwner < int.MaxValue && r.Any(x => x.Item2))
                        foreach (var owner in owners)
                        {
                            int added = r.Count(x => x.Item2 && x.Item1.Submission.Owner == owner);
                            int queued = Count(c, tx, owner);
                            if (added > 0 && queued > maxQueuedPerOwner) throw new QueueLimitException(queued - added, added, maxQueuedPerOwner);
                        }
                    Notify(c, tx, NewWork);
                    return r;
                });
                Raise(NewWork);
                return submitted;
            }
            // Another replica inserted one of the keys first: the next try finds its job.
            catch (Exception e) when (submissions.Any(s => s.IdempotencyKey is not null) && IsUniqueViolation(e)) { }
        }
    }

    (JobRecord, bool) SubmitIn(DbConnection c, DbTransaction tx, JobSubmission s)
    {
        long now = Now;
        if (s.IdempotencyKey is { } key)
        {
            var existing = Query(c, tx, $"SELECT {Columns} FROM jobs WHERE owner = @owner AND idempotency_key = @key", p => { p("owner", s.Owner); p("key", key); });
            if (existing.Count == 1)
            {
                if (existing[0].Created.ToUnixTimeMilliseconds() > now - (long)IdempotencyWindow.TotalMilliseconds) return (existing[0], false);
                // Past the window: the key is free again; the old job keeps everything but the key.
                Execute(c, tx, "UPDATE jobs SET idempotency_key = NULL WHERE id = @id", p => p("id", existing[0].Id));
            }
        }
        string id = JobRows.NewId();
        Execute(c, tx, $"""
            INSERT INTO jobs (id, owner, idempotency_key, status, priority, model, batch_key, batch, labels, webhook_url, request, max_attempts, created, webhook_state, steps)
            VALUES (@id, @owner, @key, @status, @priority, @model, @batch_key, @batch, CAST(@labels AS {JsonType}), @webhook, @request, @max, @now, @webhook_state, @steps)
            """, p =>
        {
            p("id", id); p("owner", s.Owner); p("key", s.IdempotencyKey); p("status", (int)JobStatus.Queued); p("priority", s.Priority);
            p("model", s.Model); p("batch_key", s.BatchKey); p("batch", s.Batch); p("labels", JsonSerializer.Serialize(s.Labels));
            p("webhook", s.WebhookUrl); p("request", s.Request); p("max", s.MaxAttempts); p("now", now);
            p("webhook_state", s.WebhookUrl is null ? null : (int)WebhookState.Waiting); p("steps", s.Steps);
        });
        return (Row(c, tx, id)!, true);
    }

    public JobRecord? Get(string id)
    {
        using var c = Connect();
        return Row(c, null, id);
    }

    public IReadOnlyList<JobRecord> List(JobQuery q)
    {
        var where = new List<string> { "seq > @after", "expired = 0" };
        if (q.Status is not null) where.Add("status = @status");
        if (q.Batch is not null) where.Add("batch = @batch");
        if (q.Label is not null) where.Add("labels ->> CAST(@label_key AS TEXT) = @label_value");
        if (q.Owner is not null) where.Add("owner = @owner");
        using var c = Connect();
        return Query(c, null, $"SELECT {Columns} FROM jobs WHERE {string.Join(" AND ", where)} ORDER BY seq LIMIT @limit", p =>
        {
            p("after", q.After); p("limit", Math.Max(0, q.Limit));
            if (q.Status is { } st) p("status", (int)st);
            if (q.Batch is { } b) p("batch", b);
            if (q.Label is { } l) { p("label_key", l.Key); p("label_value", l.Value); }
            if (q.Owner is { } o) p("owner", o);
        });
    }

    public IReadOnlyDictionary<JobStatus, int> BatchCounts(string batch, string? owner = null)
    {
        using var c = Connect();
        using var cmd = Command(c, null, "SELECT status, COUNT(*) FROM jobs WHERE batch = @batch AND expired = 0 AND (CAST(@owner AS TEXT) IS NULL OR owner = CAST(@owner AS TEXT)) GROUP BY status",
            p => { p("batch", batch); p("owner", owner); });
        using var r = cmd.ExecuteReader();
        var counts = Enum.GetValues<JobStatus>().ToDictionary(s => s, _ => 0);
        while (r.Read()) counts[(JobStatus)Convert.ToInt32(r[0])] = Convert.ToInt32(r[1]);
        return counts;
    }

    public int QueuedCount(string? owner = null)
    {
        using var c = Connect();
        return Count(c, null, owner);
    }

    static int Count(DbConnection c, DbTransaction? tx, string? owner)
    {
        using var cmd = Command(c, tx, "SELECT COUNT(*) FROM jobs WHERE status = @q AND (CAST(@owner AS TEXT) IS NULL OR owner = CAST(@owner AS TEXT))",
            p => { p("q", (int)JobStatus.Queued); p("owner", owner); });
        return Convert.ToInt32(cmd.ExecuteScalar());
    }

    /// <summary>
    /// Inside a submission's transaction: serialises submissions of one owner, so its queued-job limit holds across replicas
    /// (PostgreSQL: a transaction advisory lock on the owner; SQLite has one writer already).
    /// </summary>
    protected virtual void LockOwner(DbConnection c, DbTransaction tx, string owner) { }

    public JobRecord? Cancel(string id) => WriteJob(id, (c, tx) =>
    {
        Execute(c, tx, "UPDATE jobs SET status = @cancelled, finished = @now WHERE id = @id AND status = @queued", p =>
            { p("cancelled", (int)JobStatus.Cancelled); p("now", Now); p("id", id); p("queued", (int)JobStatus.Queued); });
        Execute(c, tx, "UPDATE jobs SET cancel_requested = 1 WHERE id = @id AND status = @running", p => { p("id", id); p("running", (int)JobStatus.Running); });
        ArmWebhooks(c, tx);
        return Row(c, tx, id);
    });

    public IReadOnlyList<JobRecord> Claim(string replica, IReadOnlyCollection<string> models, int max, TimeSpan lease)
    {
        if (max < 1 || models.Count == 0) return [];
        var claimed = Write((c, tx) =>
        {
            var rows = ClaimRows(c, tx, replica, models, max, Now + (long)lease.TotalMilliseconds);
            foreach (var j in rows) Notify(c, tx, j.Id);
            return rows;
        });
        foreach (var j in claimed) Raise(j.Id);
        return claimed;
    }

    /// <summary>The UPDATE that leases claimed rows (shared by the claims; bind @running, @replica, @until, @now).</summary>
    protected const string LeaseSet = "status = @running, replica = @replica, lease_until = @until, attempts = attempts + 1, started = COALESCE(started, @now), step = 0";

    public JobRecord? Renew(string id, string replica, TimeSpan lease, int step, int steps) => WriteJob(id, (c, tx) =>
        Execute(c, tx, "UPDATE jobs SET lease_until = @until, step = @step, steps = CASE WHEN @steps > 0 THEN @steps ELSE steps END WHERE id = @id AND status = @running AND replica = @replica", p =>
            { p("until", Now + (long)lease.TotalMilliseconds); p("step", step); p("steps", steps); p("id", id); p("running", (int)JobStatus.Running); p("replica", replica); })
        == 1 ? Row(c, tx, id) : null);

    public bool Complete(string id, string replica, JobResult result) => WriteJob(id, (c, tx) =>
    {
        int n = Execute(c, tx, """
            UPDATE jobs SET status = @succeeded, finished = @now, lease_until = NULL, result = @result, image_count = @count, result_bytes = @bytes, step = steps,
                error_code = NULL, error_message = NULL
            WHERE id = @id AND status = @running AND replica = @replica
            """, p =>
        {
            p("succeeded", (int)JobStatus.Succeeded); p("now", Now); p("result", result.Document); p("count", result.Images.Count);
            p("bytes", result.Images.Sum(i => (long)i.Bytes.Length) + result.Document.Length);
            p("id", id); p("running", (int)JobStatus.Running); p("replica", replica);
        });
        if (n == 0) return false;
        foreach (var img in result.Images)
            Execute(c, tx, "INSERT INTO job_images (job_id, idx, mime, bytes, seed, width, height) VALUES (@id, @idx, @mime, @bytes, @seed, @w, @h)", p =>
                { p("id", id); p("idx", img.Index); p("mime", img.MimeType); p("bytes", img.Bytes); p("seed", img.Seed); p("w", img.Width); p("h", img.Height); });
        ArmWebhooks(c, tx);
        return true;
    });

    public bool Fail(string id, string replica, JobError error, bool retryable) => WriteJob(id, (c, tx) => Execute(c, tx, """
        UPDATE jobs SET
            status = CASE WHEN @retryable = 1 AND attempts < max_attempts THEN @queued ELSE @failed END,
            finished = CASE WHEN @retryable = 1 AND attempts < max_attempts THEN NULL ELSE @now END,
            replica = CASE WHEN @retryable = 1 AND attempts < max_attempts THEN NULL ELSE replica END,
            lease_until = NULL, error_code = @code, error_message = @message
        WHERE id = @id AND status = @running AND replica = @replica
        """, p =>
    {
        p("retryable", retryable ? 1 : 0); p("queued", (int)JobStatus.Queued); p("failed", (int)JobStatus.Failed); p("now", Now);
        p("code", error.Code); p("message", error.Message); p("id", id); p("running", (int)JobStatus.Running); p("replica", replica);
    }) == 1 && Armed(c, tx));

    bool Armed(DbConnection c, DbTransaction tx)
    {
        ArmWebhooks(c, tx);
        return true;
    }

    public bool Release(string id, string replica) => WriteJob(id, (c, tx) => Execute(c, tx,
        "UPDATE jobs SET status = @queued, replica = NULL, lease_until = NULL, attempts = attempts - 1, step = 0 WHERE id = @id AND status = @running AND replica = @replica",
        p => { p("queued", (int)JobStatus.Queued); p("id", id); p("running", (int)JobStatus.Running); p("replica", replica); }) == 1);

    public bool Cancelled(string id, string replica) => WriteJob(id, (c, tx) => Execute(c, tx,
        "UPDATE jobs SET status = @cancelled, finished = @now, lease_until = NULL WHERE id = @id AND status = @running AND replica = @replica", p =>
        { p("cancelled", (int)JobStatus.Cancelled); p("now", Now); p("id", id); p("running", (int)JobStatus.Running); p("replica", replica); }) == 1 && Armed(c, tx));

    public int ReclaimExpired()
    {
        var ids = Write((c, tx) =>
        {
            var expired = Ids(c, tx, "SELECT id FROM jobs WHERE status = @running AND lease_until < @now", p => { p("running", (int)JobStatus.Running); p("now", Now); });
            if (expired.Count == 0) return expired;
            ReclaimIn(c, tx);
            ArmWebhooks(c, tx);
            foreach (var id in expired) Notify(c, tx, id);
            return expired;
        });
        foreach (var id in ids) Raise(id);
        return ids.Count;
    }

    int ReclaimIn(DbConnection c, DbTransaction tx) => Execute(c, tx, """
        UPDATE jobs SET
            status = CASE WHEN cancel_requested = 1 THEN @cancelled WHEN attempts < max_attempts THEN @queued ELSE @failed END,
            finished = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN @now ELSE NULL END,
            error_code = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts THEN 'lease_expired' ELSE error_code END,
            error_message = CASE WHEN cancel_requested = 0 AND attempts >= max_attempts
                THEN 'the replica running it stopped answering (' || attempts || ' of ' || max_attempts || ' attempts)' ELSE error_message END,
            lease_until = NULL
        WHERE status = @running AND lease_until < @now
        """, p => { p("cancelled", (int)JobStatus.Cancelled); p("queued", (int)JobStatus.Queued); p("failed", (int)JobStatus.Failed); p("now", Now); p("running", (int)JobStatus.Running); });

    public int Expire(DateTimeOffset finishedBefore, long maxResultBytes, DateTimeOffset forgetBefore)
    {
        var ids = Write((c, tx) =>
        {
            long before = finishedBefore.ToUnixTimeMilliseconds();
            var old = Ids(c, tx, "SELECT id FROM jobs WHERE expired = 0 AND finished IS NOT NULL AND finished < @before", p => p("before", before));
            // Over the byte budget: the oldest finished results go first, until the rest fits.
            using (var cmd = Command(c, tx, "SELECT id, result_bytes FROM jobs WHERE expired = 0 AND result_bytes > 0 AND finished >= @before ORDER BY finished DESC, seq DESC",
                p => p("before", before)))
            using (var r = cmd.ExecuteReader())
            {
                long kept = 0;
                while (r.Read())
                {
                    kept += Convert.ToInt64(r[1]);
                    if (kept > maxResultBytes) old.Add(r.GetString(0));
                }
            }
            foreach (var id in old)
            {
                Execute(c, tx, "DELETE FROM job_images WHERE job_id = @id", p => p("id", id));
                // A tombstone stays (no request, result or images) so a GET can say the job expired rather than never existed.
                Execute(c, tx, "UPDATE jobs SET expired = 1, request = @empty, result = NULL, result_bytes = 0, idempotency_key = NULL WHERE id = @id",
                    p => { p("id", id); p("empty", Array.Empty<byte>()); });
                Notify(c, tx, id);
            }
            Execute(c, tx, "DELETE FROM jobs WHERE expired = 1 AND finished < @forget", p => p("forget", forgetBefore.ToUnixTimeMilliseconds()));
            return old;
        });
        foreach (var id in ids) Raise(id);
        return ids.Count;
    }

    public int QueuePosition(JobRecord job)
    {
        if (job.Status != JobStatus.Queued) return 0;
        using var c = Connect();
        using var cmd = Command(c, null, "SELECT COUNT(*) FROM jobs WHERE status = @queued AND model = @model AND (priority > @priority OR (priority = @priority AND seq < @seq))",
            p => { p("queued", (int)JobStatus.Queued); p("model", job.Submission.Model); p("priority", job.Submission.Priority); p("seq", job.Sequence); });
        return Convert.ToInt32(cmd.ExecuteScalar());
    }

    public JobStats Stats()
    {
        using var c = Connect();
        using var cmd = Command(c, null, "SELECT status, model, priority, COUNT(*) FROM jobs WHERE expired = 0 GROUP BY status, model, priority", null);
        using var r = cmd.ExecuteReader();
        var byStatus = Enum.GetValues<JobStatus>().ToDictionary(s => s, _ => 0L);
        var queued = new List<(string, int, long)>();
        while (r.Read())
        {
            var status = (JobStatus)Convert.ToInt32(r[0]);
            long n = Convert.ToInt64(r[3]);
            byStatus[status] += n;
            if (status == JobStatus.Queued) queued.Add((r.GetString(1), Convert.ToInt32(r[2]), n));
        }
        return new JobStats(byStatus, queued);
    }

    /// <summary>Appended to a SELECT that picks rows to change, where the database can skip rows other transactions hold (PostgreSQL).</summary>
    protected virtual string SkipLocked => "";

    static List<string> Ids(DbConnection c, DbTransaction tx, string sql, Action<Action<string, object?>> bind)
    {
        using var cmd = Command(c, tx, sql, bind);
        using var r = cmd.ExecuteReader();
        var ids = new List<string>();
        while (r.Read()) ids.Add(r.GetString(0));
        return ids;
    }

    public JobImage? GetImage(string id, int index)
    {
        using var c = Connect();
        using var cmd = Command(c, null, "SELECT mime, bytes, seed, width, height FROM job_images WHERE job_id = @id AND idx = @idx", p => { p("id", id); p("idx", index); });
        using var r = cmd.ExecuteReader();
        return r.Read() ? new JobImage(index, r.GetString(0), (byte[])r[1], Convert.ToInt64(r[2]), Convert.ToInt32(r[3]), Convert.ToInt32(r[4])) : null;
    }

    /// <summary>One job; with its request only when <paramref name="withRequest"/> (a claim runs it).</summary>
    protected static JobRecord? Row(DbConnection c, DbTransaction? tx, string id, bool withRequest = false) =>
        Query(c, tx, $"SELECT {(withRequest ? "*" : Columns)} FROM jobs WHERE id = @id", p => p("id", id)).SingleOrDefault();

    protected static DbCommand Command(DbConnection c, DbTransaction? tx, string sql, Action<Action<string, object?>>? bind)
    {
        var cmd = c.CreateCommand();
        cmd.CommandText = sql;
        cmd.Transaction = tx;
        bind?.Invoke((name, value) =>
        {
            var p = cmd.CreateParameter();
            p.ParameterName = name;
            p.Value = value ?? DBNull.Value;
            cmd.Parameters.Add(p);
        });
        return cmd;
    }

    protected static int Execute(DbConnection c, DbTransaction? tx, string sql, Action<Action<string, object?>>? bind = null)
    {
        using var cmd = Command(c, tx, sql, bind);
        return cmd.ExecuteNonQuery();
    }

    protected static List<JobRecord> Query(DbConnection c, DbTransaction? tx, string sql, Action<Action<string, object?>>? bind)
    {
        using var cmd = Command(c, tx, sql, bind);
        using var r = cmd.ExecuteReader();
        var jobs = new List<JobRecord>();
        while (r.Read()) jobs.Add(JobRows.Read(r));
        return jobs;
    }

    public abstract void Dispose();
}
