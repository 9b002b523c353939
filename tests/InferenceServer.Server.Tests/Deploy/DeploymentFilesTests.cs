using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using InferenceServer.Server.Cli;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Jobs;
using InferenceServer.Tests.Serving;
using Microsoft.Data.Sqlite;
using Npgsql;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace InferenceServer.Tests.Deploy;

/// <summary>
/// deploy/ (docker-compose.yml and the Kubernetes manifests) against the server they deploy: nothing else runs them in CI,
/// so a renamed flag, a moved port, a probe path or a drain longer than the grace period would only show in production.
/// </summary>
public sealed partial class DeploymentFilesTests
{
    static readonly ServerOptions Defaults = new();
    static readonly string Root = FindRepoRoot();
    static readonly string DeployDir = Path.Combine(Root, "deploy");
    static readonly string K8sDir = Path.Combine(DeployDir, "k8s");

    /// <summary>Values for the compose file's ${VAR} references, as an operator's .env would give them.</summary>
    static readonly Dictionary<string, string> ComposeEnv = new()
    {
        ["POSTGRES_PASSWORD"] = "s3cret", ["WEBHOOK_SECRET"] = "whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=", ["MODELS_DIR"] = "/srv/models",
    };

    // ---------------------------------------------------------------- command lines

    [Fact]
    public void Every_command_line_is_a_valid_serve_invocation_with_the_durable_job_flags()
    {
        var serveFlags = ServeCommand.Create().Options.SelectMany(o => o.Aliases.Prepend(o.Name)).ToHashSet(StringComparer.Ordinal);
        Assert.Contains("--jobs", serveFlags);   // the set is really the serve options, not empty
        var lines = ComposeReplicas().Select(r => (r.Name, r.Command)).Append(("k8s deployment", DeploymentArgs())).ToList();
        Assert.Equal(3, lines.Count);
        foreach (var (where, args) in lines)
        {
            Assert.Equal("serve", args[0]);
            foreach (var flag in args.Where(a => a.StartsWith("--", StringComparison.Ordinal)).Select(a => a.Split('=', 2)[0]))
                Assert.True(serveFlags.Contains(flag), $"{where}: {flag} is not an option of `inference-server serve`");
            // The real parser (the root command, as Program.cs runs it): catches values a flag cannot take and stray tokens.
            var parsed = CommandLine.Build().Parse(args);
            Assert.True(parsed.Errors.Count == 0, $"{where}: {string.Join("; ", parsed.Errors.Select(e => e.Message))}");
            Assert.Equal("serve", parsed.CommandResult.Command.Name);
            // Without these a replica would use its own SQLite file, a random id and a per-process webhook secret.
            foreach (var required in new[] { "--model", "--jobs", "--replica-id", "--webhook-secret" })
                Assert.True(FlagValue(args, required) is { Length: > 0 }, $"{where}: {required} missing");
        }
    }

    [Fact]
    public void Compose_replicas_share_the_compose_postgres_and_differ_in_id_gpu_and_host_ports()
    {
        var compose = Compose();
        var services = Map(compose, "services");
        var postgres = Map(services, "postgres");
        Assert.Equal("postgres:17", Str(postgres, "image"));
        Assert.Contains("pg_isready", string.Join(" ", Seq(postgres, "healthcheck", "test")));
        var pgEnv = Map(postgres, "environment");

        var replicas = ComposeReplicas();
        Assert.Equal(new[] { "replica-a", "replica-b" }, replicas.Select(r => r.Name));
        Assert.Equal(replicas.Count, replicas.Select(r => FlagValue(r.Command, "--replica-id")).Distinct().Count());
        foreach (var (name, service, command) in replicas)
        {
            Assert.Equal("inference-server:cuda", Str(service, "image"));
            Assert.Equal("../Dockerfile.cuda", Path.Combine(Str(service, "build", "context"), Str(service, "build", "dockerfile")).Replace('\\', '/'));
            Assert.Equal("service_healthy", Str(service, "depends_on", "postgres", "condition"));
            // The URL the server will actually connect with: the compose postgres service, its user, password and database.
            var db = new NpgsqlConnectionStringBuilder(PostgresJobStore.ToConnectionString(FlagValue(command, "--jobs")!));
            Assert.True(services.Children.ContainsKey(new YamlScalarNode(db.Host!)), $"{name}: --jobs host {db.Host} is not a compose service");
            Assert.Equal(Interpolate(Str(pgEnv, "POSTGRES_USER")), db.Username);
            Assert.Equal(Interpolate(Str(pgEnv, "POSTGRES_DB")), db.Database);
            Assert.Equal(Interpolate(Str(pgEnv, "POSTGRES_PASSWORD")), db.Password);
            Assert.Equal(ComposeEnv["WEBHOOK_SECRET"], FlagValue(command, "--webhook-secret"));
            Assert.Contains(Seq(service, "volumes"), v => v.EndsWith(":/models:ro", StringComparison.Ordinal));
            var gpu = Assert.Single(((YamlSequenceNode)Node(service, "deploy", "resources", "reservations", "devices")).Cast<YamlMappingNode>());
            Assert.Equal("nvidia", Str(gpu, "driver"));
            Assert.Contains("gpu", Seq(gpu, "capabilities"));
        }
        // Each replica gets its own card, and both listen on the server's ports inside the container.
        var gpus = replicas.Select(r => string.Join(",", Seq((YamlMappingNode)Node(r.Service, "deploy", "resources", "reservations", "devices")[0], "device_ids"))).ToList();
        Assert.Equal(gpus.Count, gpus.Distinct().Count());
        var mappings = replicas.SelectMany(r => Seq(r.Service, "ports").Select(p => (r.Name, Host: p.Split(':')[0], Container: int.Parse(p.Split(':')[1])))).ToList();
        Assert.Equal(mappings.Count, mappings.Select(m => m.Host).Distinct().Count());
        foreach (var r in replicas)
            Assert.Equal(new[] { Defaults.HttpPort, Defaults.GrpcPort }.Order(), mappings.Where(m => m.Name == r.Name).Select(m => m.Container).Order());
    }

    [Fact]
    public void Compose_waits_for_the_drain_before_killing_a_replica()
    {
        foreach (var (name, service, _) in ComposeReplicas())
        {
            var grace = ParseComposeDuration(Str(service, "stop_grace_period"));
            Assert.True(grace >= Defaults.ShutdownTimeout, $"{name}: stop_grace_period {grace} < drain {Defaults.ShutdownTimeout}");
        }
    }

    // ---------------------------------------------------------------- kubernetes

    [Fact]
    public void Deployment_ports_probes_env_and_termination_fit_the_server()
    {
        var deployment = K8s("deployment.yaml").Single();
        var pod = Map(deployment, "spec", "template", "spec");
        var container = Assert.Single(((YamlSequenceNode)Node(pod, "containers")).Cast<YamlMappingNode>());
        Assert.Equal("1", Str(container, "resources", "limits", "nvidia.com/gpu"));

        var ports = ContainerPorts(container);
        Assert.Equal(Defaults.HttpPort, ports["http"]);
        Assert.Equal(Defaults.GrpcPort, ports["grpc"]);
        Assert.Equal(("/readyz", "http"), Probe(container, "readinessProbe"));
        Assert.Equal(("/healthz", "http"), Probe(container, "livenessProbe"));
        Assert.Contains(Probe(container, "startupProbe").Path, new[] { "/readyz", "/healthz" });
        Assert.Equal("http", Probe(container, "startupProbe").Port);

        // Every $(VAR) in args must be defined in env, or the kubelet passes the text "$(VAR)" through unexpanded.
        var env = ((YamlSequenceNode)Node(container, "env")).Cast<YamlMappingNode>().ToDictionary(e => Str(e, "name"));
        var referenced = DeploymentArgs().SelectMany(a => EnvRef().Matches(a)).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(new[] { "JOBS_DATABASE_URL", "POD_NAME", "WEBHOOK_SECRET" }, referenced.Order());
        foreach (var name in referenced) Assert.True(env.ContainsKey(name), $"$({name}) is not in the container's env");
        Assert.Equal("--replica-id=$(POD_NAME)", DeploymentArgs().Single(a => a.StartsWith("--replica-id", StringComparison.Ordinal)));
        Assert.Equal("metadata.name", Str(env["POD_NAME"], "valueFrom", "fieldRef", "fieldPath"));
        var secret = ExampleSecret();
        foreach (var name in new[] { "JOBS_DATABASE_URL", "WEBHOOK_SECRET" })
        {
            Assert.Equal(Str(secret, "metadata", "name"), Str(env[name], "valueFrom", "secretKeyRef", "name"));
            Assert.True(Map(secret, "stringData").Children.ContainsKey(new YamlScalarNode(Str(env[name], "valueFrom", "secretKeyRef", "key"))), $"{name}: key missing from secret.example.yaml");
        }
        // The example URL is one the server's store accepts.
        Assert.False(string.IsNullOrEmpty(new NpgsqlConnectionStringBuilder(PostgresJobStore.ToConnectionString(Str(secret, "stringData", "jobs-database-url"))).Host));

        // SIGKILL comes terminationGracePeriodSeconds after the pod starts terminating, and preStop runs before SIGTERM.
        var preStop = Seq(container, "lifecycle", "preStop", "exec", "command");
        Assert.Equal("sleep", preStop[0]);
        int sleep = int.Parse(preStop[1]);
        Assert.InRange(sleep, 1, 60);
        int grace = int.Parse(Str(pod, "terminationGracePeriodSeconds"));
        Assert.True(grace >= sleep + Defaults.ShutdownTimeout.TotalSeconds, $"grace {grace} s < preStop {sleep} s + drain {Defaults.ShutdownTimeout.TotalSeconds} s");

        var volume = Assert.Single(((YamlSequenceNode)Node(container, "volumeMounts")).Cast<YamlMappingNode>());
        Assert.Equal("/models", Str(volume, "mountPath"));
        Assert.Equal("true", Str(volume, "readOnly"));
    }

    [Fact]
    public void Service_is_headless_and_it_and_the_pdb_select_the_deployments_pods()
    {
        var deployment = K8s("deployment.yaml").Single();
        var podLabels = Labels(Map(deployment, "spec", "template", "metadata", "labels"));
        Assert.Equal(Labels(Map(deployment, "spec", "selector", "matchLabels")), podLabels);
        var containerPorts = ContainerPorts(Assert.Single(((YamlSequenceNode)Node(deployment, "spec", "template", "spec", "containers")).Cast<YamlMappingNode>()));

        var service = K8s("service.yaml").Single();
        Assert.Equal("Service", Str(service, "kind"));
        Assert.Equal("None", Str(service, "spec", "clusterIP"));   // headless: DNS lists pods, gRPC clients balance across them
        AssertSubset(Labels(Map(service, "spec", "selector")), podLabels);
        var servicePorts = ((YamlSequenceNode)Node(service, "spec", "ports")).Cast<YamlMappingNode>().ToDictionary(p => Str(p, "name"));
        Assert.Equal(Defaults.GrpcPort, int.Parse(Str(servicePorts["grpc"], "port")));
        Assert.Equal(Defaults.HttpPort, int.Parse(Str(servicePorts["http"], "port")));
        foreach (var p in servicePorts.Values) Assert.True(containerPorts.ContainsKey(Str(p, "targetPort")), $"targetPort {Str(p, "targetPort")} names no container port");

        var pdb = K8s("pdb.yaml").Single();
        Assert.Equal("PodDisruptionBudget", Str(pdb, "kind"));
        Assert.Equal("1", Str(pdb, "spec", "maxUnavailable"));
        AssertSubset(Labels(Map(pdb, "spec", "selector", "matchLabels")), podLabels);
    }

    [Fact]
    public void ScaledObject_scales_the_deployment_on_the_real_queue_depth()
    {
        var deployment = K8s("deployment.yaml").Single();
        var docs = K8s("keda-scaledobject.yaml");
        var scaled = docs.Single(d => Str(d, "kind") == "ScaledObject");
        var auth = docs.Single(d => Str(d, "kind") == "TriggerAuthentication");
        Assert.Equal("Deployment", Str(scaled, "spec", "scaleTargetRef", "kind"));
        Assert.Equal(Str(deployment, "metadata", "name"), Str(scaled, "spec", "scaleTargetRef", "name"));
        Assert.Equal("1", Str(scaled, "spec", "minReplicaCount"));
        Assert.Equal("8", Str(scaled, "spec", "maxReplicaCount"));

        var trigger = Assert.Single(((YamlSequenceNode)Node(scaled, "spec", "triggers")).Cast<YamlMappingNode>());
        Assert.Equal("postgresql", Str(trigger, "type"));
        Assert.True(double.Parse(Str(trigger, "metadata", "targetQueryValue"), System.Globalization.CultureInfo.InvariantCulture) > 0);
        Assert.Equal(Str(auth, "metadata", "name"), Str(trigger, "authenticationRef", "name"));
        var secret = ExampleSecret();
        var connection = ((YamlSequenceNode)Node(auth, "spec", "secretTargetRef")).Cast<YamlMappingNode>().Single(r => Str(r, "parameter") == "connection");
        Assert.Equal(Str(secret, "metadata", "name"), Str(connection, "name"));
        Assert.True(Map(secret, "stringData").Children.ContainsKey(new YamlScalarNode(Str(connection, "key"))), "the TriggerAuthentication's key is not in secret.example.yaml");

        var query = Str(trigger, "metadata", "query");
        var status = QueuedFilter().Match(query);
        Assert.True(status.Success, $"query does not filter jobs by status: {query}");
        Assert.Equal((int)JobStatus.Queued, int.Parse(status.Groups[1].Value));

        // The query against the schema the server creates (SQLite here: same tables and columns as PostgreSQL), with
        // queued and running jobs in it: it must count exactly the queued ones.
        var dir = Directory.CreateTempSubdirectory("deploy-queue-").FullName;
        try
        {
            string path = Path.Combine(dir, "jobs.db");
            using (var store = new SqliteJobStore(path))
            {
                for (int i = 0; i < 5; i++) store.Submit(new JobSubmission("", "{}"u8.ToArray(), "klein", "k"));
                Assert.Equal(2, store.Claim("replica-a", ["klein"], max: 2, TimeSpan.FromSeconds(30)).Count);
                using var c = new SqliteConnection($"Data Source={path}");
                c.Open();
                using var cmd = c.CreateCommand();
                cmd.CommandText = query;
                Assert.Equal(3L, Convert.ToInt64(cmd.ExecuteScalar()));
                Assert.Equal(store.QueuedCount(), Convert.ToInt32(cmd.ExecuteScalar()));
            }
            SqliteConnection.ClearAllPools();
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    // ---------------------------------------------------------------- against a running server

    [Fact]
    public async Task Probe_paths_and_the_compose_healthcheck_answer_on_a_real_server()
    {
        var container = Assert.Single(((YamlSequenceNode)Node(K8s("deployment.yaml").Single(), "spec", "template", "spec", "containers")).Cast<YamlMappingNode>());
        var healthcheck = Seq(ComposeReplicas()[0].Service, "healthcheck", "test");
        Assert.Equal(new[] { "CMD", "bash", "-c" }, healthcheck.Take(3));
        string script = healthcheck[3];
        string defaultTarget = $"/dev/tcp/127.0.0.1/{Defaults.HttpPort}";
        Assert.Contains(defaultTarget, script);

        await using var server = await RunningServer.StartAsync(o => o.Jobs.Store = "off");
        using var http = new HttpClient { BaseAddress = server.HttpBase };
        foreach (var (probe, body) in new[] { ("readinessProbe", "ready"), ("livenessProbe", "ok"), ("startupProbe", (string?)null) })
        {
            var response = await http.GetAsync(Probe(container, probe).Path.TrimStart('/'));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            if (body is not null) Assert.Equal(body, await response.Content.ReadAsStringAsync());
        }
        // The compose healthcheck as docker runs it in the container, aimed at this server's port instead of 8080.
        Assert.Equal(0, await RunBash(script.Replace(defaultTarget, $"/dev/tcp/127.0.0.1/{server.HttpPort}")));

        // And it must fail on a 503 (loading, draining), not just on a refused connection: a stub that answers 503.
        using var stub = new TcpListener(IPAddress.Loopback, 0);
        stub.Start();
        var answered = Task.Run(async () =>
        {
            using var client = await stub.AcceptTcpClientAsync();
            var stream = client.GetStream();
            var request = new StringBuilder();
            var buffer = new byte[1024];
            while (!request.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
            {
                int n = await stream.ReadAsync(buffer);
                if (n == 0) break;
                request.Append(Encoding.ASCII.GetString(buffer, 0, n));
            }
            await stream.WriteAsync("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"u8.ToArray());
            return request.ToString();
        });
        int stubPort = ((IPEndPoint)stub.LocalEndpoint).Port;
        Assert.NotEqual(0, await RunBash(script.Replace(defaultTarget, $"/dev/tcp/127.0.0.1/{stubPort}")));
        Assert.StartsWith("GET /readyz ", await answered.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    // ---------------------------------------------------------------- helpers

    [GeneratedRegex(@"\$\((\w+)\)")]
    private static partial Regex EnvRef();

    [GeneratedRegex(@"\bFROM\s+jobs\s+WHERE\s+status\s*=\s*(\d+)\s*$", RegexOptions.IgnoreCase)]
    private static partial Regex QueuedFilter();

    [GeneratedRegex(@"\$\{(\w+)(?::([-?])([^}]*))?\}")]
    private static partial Regex ComposeVar();

    [GeneratedRegex(@"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")]
    private static partial Regex ComposeDuration();

    static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "InferenceServer.sln"))) return dir.FullName;
        throw new InvalidOperationException($"no InferenceServer.sln above {AppContext.BaseDirectory}");
    }

    /// <summary>Every document of a YAML file; merge keys (<c>&lt;&lt;: *anchor</c>) resolved as docker compose resolves them.</summary>
    static List<YamlMappingNode> LoadYaml(string path)
    {
        var stream = new YamlStream();
        using (var reader = File.OpenText(path)) stream.Load(new MergingParser(new Parser(reader)));
        return stream.Documents.Select(d => (YamlMappingNode)d.RootNode).ToList();
    }

    static List<YamlMappingNode> K8s(string file) => LoadYaml(Path.Combine(K8sDir, file));

    static YamlMappingNode ExampleSecret()
    {
        var secret = K8s("secret.example.yaml").Single();
        Assert.Equal("Secret", Str(secret, "kind"));
        return secret;
    }

    static YamlMappingNode Compose() => LoadYaml(Path.Combine(DeployDir, "docker-compose.yml")).Single();

    /// <summary>The server services of the compose file (those built from the server image), with their interpolated commands.</summary>
    static List<(string Name, YamlMappingNode Service, string[] Command)> ComposeReplicas() =>
        Map(Compose(), "services").Children
            .Select(kv => (Name: ((YamlScalarNode)kv.Key).Value!, Service: (YamlMappingNode)kv.Value))
            .Where(s => s.Service.Children.ContainsKey(new YamlScalarNode("command")) && Str(s.Service, "image") == "inference-server:cuda")
            .Select(s => (s.Name, s.Service, Seq(s.Service, "command").Select(Interpolate).ToArray()))
            .ToList();

    static string[] DeploymentArgs()
    {
        var container = Assert.Single(((YamlSequenceNode)Node(K8s("deployment.yaml").Single(), "spec", "template", "spec", "containers")).Cast<YamlMappingNode>());
        return [.. Seq(container, "args")];
    }

    /// <summary>Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with <see cref="ComposeEnv"/>; an unset required one fails.</summary>
    static string Interpolate(string value) => ComposeVar().Replace(value, m =>
        ComposeEnv.TryGetValue(m.Groups[1].Value, out var v) ? v
        : m.Groups[2].Value == "-" ? m.Groups[3].Value
        : throw new InvalidOperationException($"compose variable {m.Groups[1].Value} is unset"));

    static TimeSpan ParseComposeDuration(string value)
    {
        var m = ComposeDuration().Match(value);
        Assert.True(m.Success && value.Length > 0, $"unsupported duration {value}");
        int Part(int g) => m.Groups[g].Success ? int.Parse(m.Groups[g].Value) : 0;
        return new TimeSpan(Part(1), Part(2), Part(3));
    }

    /// <summary>The value of <c>--flag VALUE</c> or <c>--flag=VALUE</c>; null when absent.</summary>
    static string? FlagValue(string[] args, string flag)
    {
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == flag) return i + 1 < args.Length ? args[i + 1] : "";
            if (args[i].StartsWith(flag + "=", StringComparison.Ordinal)) return args[i][(flag.Length + 1)..];
        }
        return null;
    }

    static Dictionary<string, int> ContainerPorts(YamlMappingNode container) =>
        ((YamlSequenceNode)Node(container, "ports")).Cast<YamlMappingNode>().ToDictionary(p => Str(p, "name"), p => int.Parse(Str(p, "containerPort")));

    static (string Path, string Port) Probe(YamlMappingNode container, string probe) =>
        (Str(container, probe, "httpGet", "path"), Str(container, probe, "httpGet", "port"));

    static Dictionary<string, string> Labels(YamlMappingNode map) =>
        map.Children.ToDictionary(kv => ((YamlScalarNode)kv.Key).Value!, kv => ((YamlScalarNode)kv.Value).Value!);

    static void AssertSubset(Dictionary<string, string> selector, Dictionary<string, string> labels)
    {
        Assert.NotEmpty(selector);
        foreach (var (k, v) in selector) Assert.True(labels.TryGetValue(k, out var l) && l == v, $"selector {k}={v} does not match the pod labels");
    }

    static YamlNode Node(YamlNode node, params string[] path)
    {
        foreach (var key in path)
        {
            Assert.True(node is YamlMappingNode m && m.Children.TryGetValue(new YamlScalarNode(key), out var next), $"missing key {key} (path {string.Join('.', path)})");
            node = ((YamlMappingNode)node).Children[new YamlScalarNode(key)];
        }
        return node;
    }

    static YamlMappingNode Map(YamlNode node, params string[] path) => (YamlMappingNode)Node(node, path);
    static string Str(YamlNode node, params string[] path) => ((YamlScalarNode)Node(node, path)).Value!;
    static List<string> Seq(YamlNode node, params string[] path) =>
        ((YamlSequenceNode)Node(node, path)).Select(n => ((YamlScalarNode)n).Value!).ToList();

    static async Task<int> RunBash(string script)
    {
        using var p = Process.Start(new ProcessStartInfo("bash") { ArgumentList = { "-c", script }, UseShellExecute = false })!;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        try { await p.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException) { p.Kill(entireProcessTree: true); throw new TimeoutException($"bash did not finish: {script}"); }
        return p.ExitCode;
    }
}
