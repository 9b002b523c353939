using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.ZImage;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Serving;

/// <summary>A tiny random model folder (FP32), written once per test run and shared by every server the tests start.</summary>
public static class TinyModel
{
    static readonly Lazy<string> folder = new(() =>
    {
        string dir = Path.Combine(Directory.CreateTempSubdirectory("server-tiny-").FullName, "flux2-tiny");
        Flux2RandomModel.Write(ModelCards.Load("flux2-tiny"), Flux2Layout.Bfl, dir, ScalarType.Float32, seed: 5);
        return dir;
    });
    public static string Folder => folder.Value;

    static readonly Lazy<string> zimage = new(() =>
    {
        string dir = Path.Combine(Directory.CreateTempSubdirectory("server-zimage-tiny-").FullName, "zimage-tiny");
        ZImageRandomModel.Write(ZImageModelCard.Load("zimage-tiny"), dir, ScalarType.Float32, seed: 5);
        return dir;
    });
    /// <summary>A tiny random Z-Image folder (diffusers layout, FP32).</summary>
    public static string ZImageFolder => zimage.Value;
}

/// <summary>
/// A real server (Kestrel on loopback, free ports) over the tiny model. Started and ready when the constructor returns;
/// <see cref="DisposeAsync"/> stops it gracefully.
/// </summary>
public sealed class RunningServer : IAsyncDisposable
{
    public WebApplication App { get; }
    public int HttpPort { get; }
    public int GrpcPort { get; }
    public Uri HttpBase => new($"http://127.0.0.1:{HttpPort}/");
    public Uri GrpcAddress => new($"http://127.0.0.1:{GrpcPort}");
    public ImageScheduler Scheduler => App.Services.GetRequiredService<ImageScheduler>();

    RunningServer(WebApplication app)
    {
        App = app;
        (HttpPort, GrpcPort) = ServerHost.BoundPorts(app);
    }

    /// <summary>The app with the test defaults (tiny model, loopback, ports 0, FP32) and <paramref name="configure"/> on top, not started.</summary>
    public static WebApplication Build(Action<ServerOptions>? configure = null, Action<WebApplicationBuilder>? customize = null) =>
        ServerHost.Build([], o =>
        {
            o.Models = [TinyModel.Folder];
            o.ModelName = "tiny";
            o.DType = "fp32";
            o.BindAddress = "127.0.0.1";
            o.HttpPort = 0;
            o.GrpcPort = 0;
            // Each server its own job store (SQLite in a fresh folder, removed with the server): no test sees another's jobs.
            o.Jobs.DataDirectory = Directory.CreateTempSubdirectory("server-jobs-").FullName;
            configure?.Invoke(o);
        }, customize);

    /// <param name="configure">Options on top of the test defaults (tiny model, loopback, ports 0, FP32).</param>
    public static async Task<RunningServer> StartAsync(Action<ServerOptions>? configure = null, Action<WebApplicationBuilder>? customize = null)
    {
        var app = Build(configure, customize);
        await app.StartAsync();
        var server = new RunningServer(app);
        await server.Scheduler.Loaded.WaitAsync(TimeSpan.FromMinutes(2));
        return server;
    }

    public async ValueTask DisposeAsync()
    {
        string? jobs = App.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<ServerOptions>>().Value.Jobs.DataDirectory;
        await App.StopAsync();
        await App.DisposeAsync();
        if (jobs is not null && jobs.Contains("server-jobs-", StringComparison.Ordinal)) try { Directory.Delete(jobs, recursive: true); } catch (IOException) { }
    }
}
