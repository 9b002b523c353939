using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using Google.Protobuf;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using InferenceServer.Client.V1;
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
        }).AddServiceOptions<ImageGrpcService>(o => o.Interceptors.Add<GrpcCallInterceptor>())
          .AddServiceOptions<JobGrpcService>(o => o.Interceptors.Add<GrpcCallInterceptor>());
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
        var options = endpoints.ServiceProvider.GetRequiredService<IOptions<ServerOptions>>().Value;
        var keys = new ApiKeys(options.ApiKeys);
        endpoints.MapGrpcService<ImageGrpcService>().Add(b => b.RequestDelegate = Guard(b.RequestDelegate!, options.Limits.MaxRequestBytes, keys));
        endpoints.MapGrpcService<JobGrpcService>().Add(b => b.RequestDelegate = Guard(b.RequestDelegate!, options.Limits.MaxRequestBytes, keys));
        endpoints.MapGrpcHealthChecksService();
        endpoints.MapGrpcReflectionService();
        return endpoints;
    }


    /// <summary>
    /// What every ImageService and JobService call meets before Grpc.AspNetCore reads its message, each answered trailers-only and counted:
    /// the API key, from the headers, before any body byte is read (UNAUTHENTICATED; the interceptor checks it again);
    /// the first message's size from its 5-byte frame header (RESOURCE_EXHAUSTED naming the size and the limit; Grpc.AspNetCore's
    /// own check, kept as the backstop, says only "Received message exceeds the maximum configured message size"); and the
    /// message itself, parsed once (INVALID_ARGUMENT naming the type: undecodable bytes or invalid UTF-8 in a string field
    /// reached Grpc.AspNetCore's deserializer, whose failure is UNKNOWN, logged with a stack trace and missing from the
    /// metrics). Nothing is consumed: the call reads the message as usual.
    /// </summary>
    static RequestDelegate Guard(RequestDelegate next, long limit, ApiKeys keys) => async context =>
    {
        var metrics = context.RequestServices.GetRequiredService<ServerMetrics>();
        var check = keys.Check(context.Request.Headers.Authorization.ToString());
        if (check != ApiKeyCheck.Accepted)
        {
            TrailersOnly(context, metrics, StatusCode.Unauthenticated, check == ApiKeyCheck.Missing
                ? "an API key is required: send metadata 'authorization: Bearer KEY'" : "the API key is not valid", "authorization");
            return;
        }
        var reader = context.Request.BodyReader;
        var read = await reader.ReadAtLeastAsync(5, context.RequestAborted);
        long? length = read.Buffer.Length >= 5 ? MessageLength(read.Buffer) : null;
        bool compressed = read.Buffer.Length >= 5 && read.Buffer.FirstSpan[0] != 0;
        reader.AdvanceTo(read.Buffer.Start);
        if (length > limit)
        {
            TrailersOnly(context, metrics, StatusCode.ResourceExhausted,
                $"the request message is {length:N0} bytes; the limit is {limit:N0} bytes (InferenceServer:Limits:MaxRequestBytes)");
            return;
        }
        var method = context.GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>()?.Method;
        var input = method is null ? null
            : InferenceReflection.Descriptor.Services.FirstOrDefault(s => s.FullName == method.ServiceName)?.FindMethodByName(method.Name)?.InputType;
        if (length is long n && !compressed && input is not null)
        {
            var whole = await reader.ReadAtLeastAsync((int)(5 + n), context.RequestAborted);
            try
            {
                if (whole.Buffer.Length >= 5 + n) input.Parser.ParseFrom(whole.Buffer.Slice(5, n));
            }
            catch (InvalidProtocolBufferException e)
            {
                reader.AdvanceTo(whole.Buffer.Start);
                TrailersOnly(context, metrics, StatusCode.InvalidArgument, $"the request message is not a valid {input.Name}: {e.Message}");
                return;
            }
            reader.AdvanceTo(whole.Buffer.Start);
        }
        await next(context);
    };

    /// <summary>A trailers-only answer: the status travels in the headers.</summary>
    static void TrailersOnly(HttpContext context, ServerMetrics metrics, StatusCode code, string message, string? field = null)
    {
        context.Response.StatusCode = StatusCodes.Status200OK;
        context.Response.ContentType = "application/grpc";
        context.Response.Headers["grpc-status"] = ((int)code).ToString(CultureInfo.InvariantCulture);
        context.Response.Headers["grpc-message"] = Uri.EscapeDataString(message);
        if (field is not null) context.Response.Headers["field"] = field;
        metrics.Answered("grpc", code.ToString(), true, 0);
    }

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
            Task.FromResult(generator.Ready ? HealthCheckResult.Healthy("model loaded and warm") : HealthCheckResult.Unhealthy(generator.Phase));
    }
}
