using Grpc.AspNetCore.HealthChecks;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

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
            // Check runs the checks now (the publisher's cache is up to 30 s old); Watch still follows the publisher.
            o.UseHealthChecksCache = false;
            o.Services.Map("", _ => true);
            o.Services.Map(ImageServiceName, r => r.Name == EngineCheck);
        }).AddCheck<EngineHealthCheck>(EngineCheck);
        return services;
    }

    public static IEndpointRouteBuilder MapInferenceGrpc(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGrpcService<ImageGrpcService>();
        endpoints.MapGrpcHealthChecksService();
        endpoints.MapGrpcReflectionService();
        return endpoints;
    }

    /// <summary>SERVING only while the engine is ready: model loaded and warm, not draining.</summary>
    sealed class EngineHealthCheck(IImageGenerator generator) : IHealthCheck
    {
        public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
            Task.FromResult(generator.Ready ? HealthCheckResult.Healthy("model loaded and warm") : HealthCheckResult.Unhealthy("loading or draining"));
    }
}
