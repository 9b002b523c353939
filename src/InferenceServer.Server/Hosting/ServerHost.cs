using System.Net;
using InferenceServer.Models.Runtime;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Grpc;
using InferenceServer.Server.Http;
using InferenceServer.Server.Jobs;
using InferenceServer.Server.Lora;
using InferenceServer.Server.Observability;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Prometheus;

namespace InferenceServer.Server.Hosting;

/// <summary>
/// Builds the server: Kestrel with two listeners (HTTP/1.1 for the OpenAI-compatible API, /metrics and health; HTTP/2
/// cleartext for gRPC), the scheduler + engine as a hosted service, and every route. Used by the <c>serve</c> verb and by
/// the integration tests (ports 0 = free ports, read back with <see cref="BoundPorts"/>).
/// </summary>
public static class ServerHost
{
    /// <param name="args">Configuration from the command line in ASP.NET form (<c>--InferenceServer:HttpPort=8081</c>).</param>
    /// <param name="configure">Applied after appsettings.json, environment and <paramref name="args"/> (the serve verb's options, tests).</param>
    public static WebApplication Build(string[] args, Action<ServerOptions>? configure = null, Action<WebApplicationBuilder>? customize = null)
    {
        TorchRuntime.EnsureInitialized();
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        var options = new ServerOptions();
        builder.Configuration.GetSection(ServerOptions.Section).Bind(options);
        configure?.Invoke(options);
        builder.Services.AddSingleton(Options.Create(options));
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = options.ShutdownTimeout);

        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.Limits.MaxRequestBytes;
            var ip = IPAddress.Parse(options.BindAddress);
            k.Listen(ip, options.HttpPort, l => l.Protocols = HttpProtocols.Http1);
            k.Listen(ip, options.GrpcPort, l => l.Protocols = HttpProtocols.Http2);
        });
        builder.Logging.AddSimpleConsole(c => { c.IncludeScopes = true; c.SingleLine = true; c.TimestampFormat = "HH:mm:ss.fff "; });

        builder.Services.AddSingleton<ServerMetrics>();
        builder.Services.AddSingleton<LoraLibrary>();
        builder.Services.AddSingleton<IdleMemoryRelease>();
        builder.Services.AddSingleton<ImageScheduler>();
        builder.Services.AddSingleton<IImageGenerator>(s => s.GetRequiredService<ImageScheduler>());
        builder.Services.AddHostedService(s => s.GetRequiredService<ImageScheduler>());
        AddJobs(builder.Services, options);
        builder.Services.AddInferenceGrpc(options);
        customize?.Invoke(builder);

        var app = builder.Build();
        var scheduler = app.Services.GetRequiredService<ImageScheduler>();
        // SIGTERM / Ctrl+C: refuse new work at once; Kestrel then waits for in-flight requests, then the engine stops.
        app.Lifetime.ApplicationStopping.Register(scheduler.BeginDrain);
        if (app.Services.GetService<JobRunner>() is { } runner) app.Lifetime.ApplicationStopping.Register(runner.BeginDrain);

        // libvips warns on stderr about damaged client images (already answered with 400): route those lines to the log.
        var vipsLog = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("libvips");
        NetVips.Log.SetLogHandler("VIPS", NetVips.Enums.LogLevelFlags.Warning | NetVips.Enums.LogLevelFlags.Message
            | NetVips.Enums.LogLevelFlags.Info | NetVips.Enums.LogLevelFlags.Critical,
            (_, level, message) => vipsLog.Log(level.HasFlag(NetVips.Enums.LogLevelFlags.Critical) ? LogLevel.Warning : LogLevel.Debug, "{Message}", message));

        app.MapGet("/healthz", () => Results.Text("ok"));
        app.MapGet("/readyz", (IImageGenerator g) => g.Ready ? Results.Text("ready") : Results.Text($"not ready: {g.Phase}", statusCode: 503));
        app.MapInferenceGrpc();
        app.MapMetrics("/metrics", app.Services.GetRequiredService<ServerMetrics>().Registry);
        app.MapOpenAiImages();
        app.MapJobsHttpApi();
        return app;
    }

    /// <summary>
    /// Durable jobs, unless <see cref="JobOptions.Store"/> is <c>off</c>: the store (opened now, so a bad setting or an
    /// unreachable database stops the start with its reason), the entry point, and the runner, webhook and housekeeping
    /// services. Registered after the scheduler: hosted services stop in reverse order, so the runner stops claiming and
    /// records its last results while the engine still drains.
    /// </summary>
    static void AddJobs(IServiceCollection services, ServerOptions options)
    {
        IJobStore? store;
        string description;
        // serve reports these as one "error:" line (exit 2): a setting it cannot read, a database it cannot reach or open.
        try { store = JobStores.Open(options.Jobs, out description); }
        catch (ArgumentException) { throw; }
        catch (Exception e) when (e is System.Data.Common.DbException or IOException or UnauthorizedAccessException or System.Net.Sockets.SocketException or TimeoutException)
        {
            throw new IOException($"job store ({options.Jobs.Store ?? "sqlite under " + JobStores.DataDirectory(options.Jobs)}): {e.Message}", e);
        }
        if (store is null) return;
        // Refused at start, not when the first webhook is due: a secret that is not whsec_ + base64, a bad allow entry.
        try
        {
            if (!string.IsNullOrEmpty(options.Jobs.WebhookSecret)) new WebhookSender(options.Jobs.WebhookSecret, new WebhookGuard()).Dispose();
            _ = new WebhookGuard(options.Jobs.WebhookAllow);
        }
        catch (Exception e) when (e is ArgumentException or FormatException)
        {
            store.Dispose();
            throw new ArgumentException($"webhooks: {e.Message}", e);
        }
        services.AddSingleton<IJobStore>(_ => store);
        services.AddSingleton<ReplicaIdentity>();
        services.AddSingleton<JobQueue>();
        services.AddSingleton<JobRunner>();
        services.AddHostedService(s =>
        {
            s.GetRequiredService<ILoggerFactory>().CreateLogger("InferenceServer.Jobs")
                .LogInformation("replica {Replica}; durable jobs in {Store}", s.GetRequiredService<ReplicaIdentity>().Id, description);
            return s.GetRequiredService<JobRunner>();
        });
        services.AddHostedService<WebhookDispatcher>();
        services.AddHostedService<JobHousekeeping>();
    }

    /// <summary>(http, grpc) ports actually bound, after the app started (ports 0 in the options pick free ones).</summary>
    public static (int Http, int Grpc) BoundPorts(WebApplication app)
    {
        var addresses = app.Urls.Select(u => new Uri(u.Replace("0.0.0.0", "127.0.0.1").Replace("[::]", "[::1]"))).ToList();
        if (addresses.Count != 2) throw new InvalidOperationException($"expected 2 bound addresses, got: {string.Join(", ", app.Urls)}");
        return (addresses[0].Port, addresses[1].Port);
    }
}
