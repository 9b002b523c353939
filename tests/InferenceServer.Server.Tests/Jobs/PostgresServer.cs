using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Npgsql;

namespace InferenceServer.Tests.Jobs;

/// <summary>
/// A real PostgreSQL for the tests: Debian's server binaries (.ci/run installs the postgresql package), a cluster made by
/// initdb in a temporary folder as the <c>postgres</c> user (initdb refuses root), started by pg_ctl on a free loopback
/// port (<c>-w</c> returns once it accepts connections); stopped and deleted on dispose. One per test class.
/// </summary>
public sealed class PostgresServer : IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("pg-test-").FullName;
    readonly string bin;
    readonly bool asPostgres = Environment.UserName == "root";
    int databases;

    public int Port { get; }
    string Data => Path.Combine(root, "data");

    public PostgresServer()
    {
        bin = Directory.Exists("/usr/lib/postgresql")
            ? Directory.GetDirectories("/usr/lib/postgresql").Select(d => Path.Combine(d, "bin")).Where(d => File.Exists(Path.Combine(d, "initdb"))).OrderDescending().FirstOrDefault() ?? ""
            : "";
        if (bin.Length == 0) throw new InvalidOperationException("PostgreSQL server binaries not found under /usr/lib/postgresql: install Debian's postgresql package (.ci/run does)");
        if (asPostgres) Run("chown", "-R", "postgres:postgres", root);
        RunAs(Path.Combine(bin, "initdb"), "-D", Data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync");
        using (var probe = new TcpListener(IPAddress.Loopback, 0)) { probe.Start(); Port = ((IPEndPoint)probe.LocalEndpoint).Port; }
        Start();
    }

    void Start() => RunAs(Path.Combine(bin, "pg_ctl"), "-D", Data, "-l", Path.Combine(root, "server.log"), "-w", "-t", "120",
        "-o", $"-p {Port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c max_connections=200", "start");

    /// <summary>
    /// Stops the server at once (<c>-m immediate</c>: every connection dropped, as a crash would) and starts it again on the
    /// same port; returns once it accepts connections.
    /// </summary>
    public void Restart()
    {
        RunAs(Path.Combine(bin, "pg_ctl"), "-D", Data, "-m", "immediate", "-w", "stop");
        Start();
    }

    /// <summary>A new, empty database and its connection string (each test gets its own).</summary>
    public string CreateDatabase()
    {
        string name = $"t{Interlocked.Increment(ref databases)}_{Environment.ProcessId}";
        using (var c = new NpgsqlConnection(ConnectionString("postgres")))
        {
            c.Open();
            using var cmd = new NpgsqlCommand($"CREATE DATABASE {name}", c);
            cmd.ExecuteNonQuery();
        }
        return ConnectionString(name);
    }

    string ConnectionString(string database) =>
        new NpgsqlConnectionStringBuilder { Host = "127.0.0.1", Port = Port, Username = "postgres", Database = database, Pooling = true }.ConnectionString;

    void RunAs(string file, params string[] args)
    {
        if (asPostgres) Run("runuser", ["-u", "postgres", "--", file, .. args]);
        else Run(file, args);
    }

    static void Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} exited {p.ExitCode}: {stderr.Result}{stdout.Result}");
    }

    public void Dispose()
    {
        NpgsqlConnection.ClearAllPools();
        try { RunAs(Path.Combine(bin, "pg_ctl"), "-D", Data, "-m", "immediate", "-w", "stop"); }
        catch (InvalidOperationException) { }   // already gone: the folder is removed either way
        Directory.Delete(root, recursive: true);
    }
}
