using InferenceServer.Server.Jobs;

namespace InferenceServer.Tests.Jobs;

/// <summary>The SQLite store (one machine) against the durable queue's rules.</summary>
public sealed class SqliteJobStoreTests : JobStoreContract
{
    readonly string dir = Directory.CreateTempSubdirectory("jobs-test-").FullName;
    protected override IJobStore Open() => new SqliteJobStore(Path.Combine(dir, "jobs.db"), time);
    protected override void Cleanup() => Directory.Delete(dir, recursive: true);
}
