using InferenceServer.Server.Jobs;

namespace InferenceServer.Tests.Jobs;

/// <summary>The PostgreSQL store (many replicas) against the same rules, on a real server started for the class.</summary>
public sealed class PostgresJobStoreTests(PostgresServer server) : JobStoreContract, IClassFixture<PostgresServer>
{
    string? database;
    protected override IJobStore Open() => new PostgresJobStore(database ??= server.CreateDatabase(), time);

    [Fact]
    public void A_postgres_url_becomes_a_connection_string()
    {
        var b = new Npgsql.NpgsqlConnectionStringBuilder(PostgresJobStore.ToConnectionString("postgres://farm:s%40cret@db.example:6543/jobs"));
        Assert.Equal(("db.example", 6543, "jobs", "farm", "s@cret"), (b.Host, b.Port, b.Database, b.Username, b.Password));
    }
}
