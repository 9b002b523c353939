using System.Data.Common;
using Microsoft.Data.Sqlite;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Jobs in one SQLite file (WAL), for a server on one machine: jobs and results survive restarts. SQLite has one writer:
/// every change is a short IMMEDIATE transaction, one at a time in this process (the busy timeout covers another
/// process on the same file), so a claim cannot hand a job to two replicas.
/// </summary>
public sealed class SqliteJobStore : SqlJobStore
{
    readonly string connectionString;
    readonly Lock writer = new();

    public SqliteJobStore(string path, TimeProvider? time = null) : base(time)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        connectionString = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadWriteCreate, Pooling = true, DefaultTimeout = 30 }.ToString();
        using var c = Connect();
        Execute(c, null, "PRAGMA journal_mode = WAL;\n" + Schema(serial: "INTEGER PRIMARY KEY AUTOINCREMENT", bigint: "INTEGER", bytes: "BLOB"));
    }

    protected override DbConnection Connect()
    {
        var c = new SqliteConnection(connectionString);
        c.Open();
        return c;
    }

    protected override string JsonType => "TEXT";

    protected override T Write<T>(Func<DbConnection, DbTransaction, T> work)
    {
        lock (writer)
        {
            using var c = (SqliteConnection)Connect();
            using var tx = c.BeginTransaction(deferred: false);   // BEGIN IMMEDIATE: the write lock before the first read
            var result = work(c, tx);
            tx.Commit();
            return result;
        }
    }

    protected override List<JobRecord> ClaimRows(DbConnection c, DbTransaction tx, string replica, IReadOnlyCollection<string> models, int max, long until)
    {
        var names = models.ToList();
        string inModels = string.Join(", ", names.Select((_, i) => $"@m{i}"));
        var head = Query(c, tx, $"SELECT {Columns} FROM jobs WHERE status = @queued AND model IN ({inModels}) ORDER BY priority DESC, seq LIMIT 1", p =>
        {
            p("queued", (int)JobStatus.Queued);
            for (int i = 0; i < names.Count; i++) p($"m{i}", names[i]);
        }).SingleOrDefault();
        if (head is null) return [];
        var ids = Query(c, tx, $"SELECT {Columns} FROM jobs WHERE status = @queued AND model = @model AND batch_key = @key ORDER BY priority DESC, seq LIMIT @max", p =>
            { p("queued", (int)JobStatus.Queued); p("model", head.Submission.Model); p("key", head.Submission.BatchKey); p("max", max); }).Select(j => j.Id).ToList();
        long now = Now;
        foreach (var id in ids)
            Execute(c, tx, $"UPDATE jobs SET {LeaseSet} WHERE id = @id", p =>
                { p("running", (int)JobStatus.Running); p("replica", replica); p("until", until); p("now", now); p("id", id); });
        return ids.Select(id => Row(c, tx, id, withRequest: true)!).ToList();
    }

    /// <summary>Closes this store's pooled connections (the file stays).</summary>
    public override void Dispose()
    {
        using var c = new SqliteConnection(connectionString);
        SqliteConnection.ClearPool(c);
    }
}
