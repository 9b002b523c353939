using InferenceServer.Server.Hosting;

namespace InferenceServer.Server.Jobs;

/// <summary>Opens the store <see cref="JobOptions.Store"/> names: <c>sqlite:PATH</c>, a PostgreSQL URL or connection string, or <c>off</c>.</summary>
public static class JobStores
{
    /// <summary>The store, or null when durable jobs are off. Throws <see cref="ArgumentException"/> naming the setting for a value it cannot read.</summary>
    public static IJobStore? Open(JobOptions o, out string description)
    {
        string value = string.IsNullOrWhiteSpace(o.Store) ? "sqlite:" + Path.Combine(DataDirectory(o), "jobs.db") : o.Store.Trim();
        if (value.Equals("off", StringComparison.OrdinalIgnoreCase))
        {
            description = "off";
            return null;
        }
        if (value.StartsWith("sqlite:", StringComparison.OrdinalIgnoreCase))
        {
            string path = Path.GetFullPath(value["sqlite:".Length..]);
            if (path.Length == 0) throw new ArgumentException("--jobs sqlite:PATH: the path is empty");
            description = "sqlite:" + path;
            return new SqliteJobStore(path);
        }
        if (value.StartsWith("postgres://", StringComparison.OrdinalIgnoreCase) || value.StartsWith("postgresql://", StringComparison.OrdinalIgnoreCase)
            || value.Contains("Host=", StringComparison.OrdinalIgnoreCase))
        {
            var builder = new Npgsql.NpgsqlConnectionStringBuilder(PostgresJobStore.ToConnectionString(value));
            description = $"postgres://{builder.Username}@{builder.Host}:{builder.Port}/{builder.Database}";   // never the password
            return new PostgresJobStore(value);
        }
        throw new ArgumentException($"--jobs {value}: use sqlite:PATH, postgres://USER@HOST:PORT/DB, an Npgsql connection string (Host=...) or off");
    }

    /// <summary>--data-dir, else $XDG_DATA_HOME/inference-server, else ~/.local/share/inference-server.</summary>
    public static string DataDirectory(JobOptions o)
    {
        if (!string.IsNullOrWhiteSpace(o.DataDirectory)) return Path.GetFullPath(o.DataDirectory);
        string? xdg = Environment.GetEnvironmentVariable("XDG_DATA_HOME");
        string root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share");
        return Path.Combine(root, "inference-server");
    }
}
