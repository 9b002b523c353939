using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.HealthCheck;
using InferenceServer.Server.Observability;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Options;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;

namespace InferenceServer.Server.Grpc;

/// <summary>
/// The gRPC surface in one services call and one map call: inference.v1.ImageService (with <see cref="GrpcCallInterceptor"/>),
/// the standard grpc.health.v1.Health service and server reflection (grpcurl).
/// </summary>
public static class GrpcEndpoints
{
    /// <summary>Name of the health check, and the health service name that reports only it (besides "" = the whole server).</summary>
    public const string EngineCheck = "engine";
    public const string ImageServiceName = "inference.v1.ImageService";

    public static IServiceCollection AddInferenceGrpc(this IServiceCollection services, ServerOptions options)
    {
        services.AddGrpc(o =>
        {
            // Messages: references in, images out (4K-class PNGs x n). An oversized request is refused with RESOURCE_EXHAUSTED
            // by Grpc.AspNetCore before it is deserialized.
            o.MaxReceiveMessageSize = (int)Math.Min(options.Limits.MaxRequestBytes, int.MaxValue);
            o.MaxSendMessageSize = (int)Math.Min(options.Limits.MaxResponseBytes, int.MaxValue);
            o.EnableDetailedErrors = false;
        }).AddServiceOptions<ImageGrpcService>(o => o.Interceptors.Add<GrpcCallInterceptor>());
        services.AddGrpcReflection();
        services.AddGrpcHealthChecks(o =>
        {
            // Check runs the checks now; Watch follows ReadinessWatcher.
            o.UseHealthChecksCache = false;
            o.Services.Map("", _ => true);
            o.Services.Map(ImageServiceName, r => r.Name == EngineCheck);
        }).AddCheck<EngineHealthCheck>(EngineCheck);
        // One writer of the Watch statuses: the readiness watcher below. The package's periodic publisher would be a second
        // one, and a report computed just before a drain could overwrite NOT_SERVING with SERVING for a whole period.
        foreach (var publisher in services.Where(d => d.ServiceType == typeof(IHealthCheckPublisher)).ToList()) services.Remove(publisher);
        services.AddHostedService<ReadinessWatcher>();
        return services;
    }

    public static IEndpointRouteBuilder MapInferenceGrpc(this IEndpointRouteBuilder endpoints)
    {
        long limit = endpoints.ServiceProvider.GetRequiredService<IOptions<ServerOptions>>().Value.Limits.MaxRequestBytes;
        endpoints.MapGrpcService<ImageGrpcService>().Add(b => b.RequestDelegate = RefuseOversizedMessages(b.RequestDelegate!, limit));
        endpoints.MapGrpcHealthChecksService();
        endpoints.MapGrpcReflectionService();
        return endpoints;
    }

    /// <summary>
    /// Reads the first message's 5-byte gRPC frame header before the call starts and refuses a message over
    /// <paramref name="limit"/> with RESOURCE_EXHAUSTED naming the size and the limit (Grpc.AspNetCore's own check, kept as
    /// the backstop, says only "Received message exceeds the maximum configured message size"). Nothing is consumed.
    /// </summary>
    static RequestDelegate RefuseOversizedMessages(RequestDelegate next, long limit) => async context =>
    {
        var read = await context.Request.BodyReader.ReadAtLeastAsync(5, context.RequestAborted);
        long? length = read.Buffer.Length >= 5 ? MessageLength(read.Buffer) : null;
        context.Request.BodyReader.AdvanceTo(read.Buffer.Start);
        if (length > limit)
        {
            string message = $"the request message is {length:N0} bytes; the limit is {limit:N0} bytes (InferenceServer:Limits:MaxRequestBytes)";
            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = "application/grpc";
            // Trailers-only response: the status travels in the headers.
            context.Response.Headers["grpc-status"] = ((int)StatusCode.ResourceExhausted).ToString(CultureInfo.InvariantCulture);
            context.Response.Headers["grpc-message"] = Uri.EscapeDataString(message);
            context.RequestServices.GetRequiredService<ServerMetrics>().Answered("grpc", nameof(StatusCode.ResourceExhausted), true, 0);
            return;
        }
        await next(context);
    };

    static long MessageLength(ReadOnlySequence<byte> buffer)
    {
        Span<byte> header = stackalloc byte[5];
        buffer.Slice(0, 5).CopyTo(header);
        return BinaryPrimitives.ReadUInt32BigEndian(header[1..]);
    }

    /// <summary>
    /// Watch streams are told of a change only when the stored status changes, which the health-check publisher does every
    /// 30 s: a readiness flip shorter than that (ready, then draining) would never reach a watcher. This pushes each flip
    /// of <see cref="IImageGenerator.Ready"/> within 100 ms (a watcher then gets the checks' current answer).
    /// </summary>
    sealed class ReadinessWatcher(IImageGenerator generator, HealthServiceImpl health) : BackgroundService
    {
        readonly Lock gate = new();
        bool? last;

        /// <summary>Stores the current readiness for Watch streams when it differs from what was stored last.</summary>
        void Publish()
        {
            lock (gate)
            {
                bool ready = generator.Ready;
                if (ready == last) return;
                var status = ready ? HealthCheckResponse.Types.ServingStatus.Serving : HealthCheckResponse.Types.ServingStatus.NotServing;
                health.SetStatus("", status);
                health.SetStatus(ImageServiceName, status);
                last = ready;
            }
        }

        // Event-driven (a ready phase shorter than any polling period is still published), with a 1 s poll as a backstop.
        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            generator.ReadinessChanged += Publish;
            try
            {
                using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
                do Publish();
                while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
            }
            catch (OperationCanceledException) { }
            finally { generator.ReadinessChanged -= Publish; }
        }
    }

    /// <summary>SERVING only while the engine is ready: model loaded and warm, not draining.</summary>
    sealed class EngineHealthCheck(IImageGenerator generator) : IHealthCheck
    {
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
            Task.FromResult(generator.Ready ? HealthCheckResult.Healthy("model loaded and warm") : HealthCheckResult.Unhealthy("loading or draining"));
    }
}
