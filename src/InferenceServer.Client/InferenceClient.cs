using System.Runtime.CompilerServices;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using InferenceServer.Client.V1;

namespace InferenceServer.Client;

/// <summary>Settings of an <see cref="InferenceClient"/>. The defaults fit 4K images and 10 references.</summary>
public sealed record InferenceClientOptions
{
    /// <summary>Largest response accepted: n images at 4K as PNG.</summary>
    public int MaxReceiveMessageBytes { get; init; } = 512 << 20;
    /// <summary>Largest request sent: 10 4K-class reference images.</summary>
    public int MaxSendMessageBytes { get; init; } = 200 << 20;
    /// <summary>
    /// Retry UNAVAILABLE (server starting or draining) and RESOURCE_EXHAUSTED (queue full) with exponential backoff, honouring
    /// the server's <c>grpc-retry-pushback-ms</c>. Off by default: a retried generation is a second generation. A stream is
    /// retried only until its first event arrives.
    /// </summary>
    public bool EnableRetries { get; init; }
    /// <summary>
    /// Attempts per call when <see cref="EnableRetries"/>, and for UNAVAILABLE with <see cref="InferenceClient.ForReplicas"/>
    /// (first try included; gRPC caps it at 5; 1: no retries).
    /// </summary>
    public int MaxAttempts { get; init; } = 4;
    /// <summary>Deadline of calls that give none; null: no deadline.</summary>
    public TimeSpan? DefaultTimeout { get; init; }
    /// <summary>
    /// Custom transport (tests, TLS settings, proxies); null: a <see cref="SocketsHttpHandler"/>. With
    /// <see cref="InferenceClient.ForReplicas"/> it must be a <see cref="SocketsHttpHandler"/> without a ConnectCallback:
    /// the balancer opens and watches one connection per replica itself.
    /// </summary>
    public HttpMessageHandler? HttpHandler { get; init; }
    /// <summary>
    /// How often a <c>dns:///</c> address of <see cref="InferenceClient.ForReplicas"/> is resolved again, so that replicas
    /// added by a scale-up get traffic (a failed connection also triggers a new look). Replicas that went away are dropped
    /// as soon as their connection fails.
    /// </summary>
    public TimeSpan DnsRefreshInterval { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>
/// A small typed client for inference.v1.ImageService, inference.v1.JobService (durable jobs, InferenceClient.Jobs.cs) and
/// grpc.health.v1.Health. Thread-safe; keep one per server (or one per farm, <see cref="ForReplicas"/>) and reuse it: it
/// owns the HTTP/2 connections. Errors are <see cref="RpcException"/>s: the status code says what happened, the
/// <c>field</c> trailer names the request field at fault, <c>retry-after</c> says when to try again.
/// </summary>
/// <example><code>
/// using var client = new InferenceClient(new Uri("http://localhost:50051"), apiKey: "secret");
/// var response = await client.GenerateAsync(new GenerateRequest { Prompt = "a red fox", Width = 1024, Height = 768 });
/// // With adapters of the server's --lora-dir: new GenerateRequest { ..., Loras = { new LoraRef { Name = "watercolor", Scale = 0.8 } } }
/// File.WriteAllBytes("fox.png", response.Images[0].Data.ToByteArray());
/// </code></example>
public sealed partial class InferenceClient : IDisposable
{
    static readonly InferenceClientOptions DefaultOptions = new();

    readonly GrpcChannel channel;
    readonly Metadata? headers;
    readonly TimeSpan? defaultTimeout;
    readonly int maxAttempts;

    /// <param name="address">The server's gRPC address, e.g. http://host:50051 (cleartext HTTP/2) or https://host.</param>
    /// <param name="apiKey">Sent as <c>authorization: Bearer KEY</c> on image and job calls; null when the server has no keys.</param>
    public InferenceClient(Uri address, string? apiKey = null, InferenceClientOptions? options = null)
        : this(address, OneServer(options ?? DefaultOptions), apiKey, options ?? DefaultOptions)
    {
    }

    InferenceClient(Uri address, GrpcChannelOptions channelOptions, string? apiKey, InferenceClientOptions options)
    {
        channel = GrpcChannel.ForAddress(address, channelOptions);
        Images = new ImageService.ImageServiceClient(channel);
        Jobs = new JobService.JobServiceClient(channel);
        Health = new Health.HealthClient(channel);
        if (apiKey is not null) headers = new Metadata { { "authorization", "Bearer " + apiKey } };
        defaultTimeout = options.DefaultTimeout;
        maxAttempts = Math.Max(1, options.MaxAttempts);
    }

    /// <summary>
    /// One client over several replicas of the server: each call goes to the next replica that is connected (gRPC's
    /// round_robin policy; a replica whose connection fails is skipped until it reconnects), and a call answered
    /// UNAVAILABLE (replica stopped, draining, still loading, or unreachable) is retried on another one, up to
    /// <see cref="InferenceClientOptions.MaxAttempts"/> tries; <see cref="InferenceClientOptions.EnableRetries"/> adds
    /// RESOURCE_EXHAUSTED (a full queue on one replica). A stream is retried only until its first event arrives.
    /// Retrying UNAVAILABLE is on here, unlike a one-server client, because moving to a live replica is the point of
    /// having several; the cost is that a live generation cut off by a dying replica runs again elsewhere. A job
    /// submission is retried too: give it an <c>idempotency_key</c> so that a retry of a submission the first replica did
    /// store returns that job (created = false) instead of queueing a second one (replicas that share a job store
    /// see the same keys).
    /// </summary>
    /// <param name="replicas">
    /// Either http(s)://host:port addresses (one per replica, all with the same scheme), or a single
    /// <c>dns:///host:port</c> address whose DNS name lists the replicas, e.g. a Kubernetes headless Service
    /// (deploy/k8s/service.yaml: <c>dns:///inference-server.NAMESPACE.svc.cluster.local:50051</c>); DNS addresses are
    /// cleartext HTTP/2, as the server speaks it, and are resolved again every <see cref="InferenceClientOptions.DnsRefreshInterval"/>.
    /// </param>
    /// <param name="apiKey">Sent as <c>authorization: Bearer KEY</c> to every replica.</param>
    public static InferenceClient ForReplicas(IEnumerable<Uri> replicas, string? apiKey = null, InferenceClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(replicas);
        options ??= DefaultOptions;
        var list = replicas.ToList();
        if (list.Count == 0) throw new ArgumentException("at least one replica address is needed", nameof(replicas));
        var channelOptions = ChannelOptions(options, ReplicaConfig(options.MaxAttempts, options.EnableRetries));
        Uri target;
        if (list.Any(u => u.Scheme == "dns"))
        {
            if (list.Count > 1) throw new ArgumentException("a dns:/// address stands alone: its DNS name lists the replicas", nameof(replicas));
            target = list[0];
            channelOptions.Credentials = ChannelCredentials.Insecure;
            channelOptions.ServiceProvider = new ResolverServices(new DnsResolverFactory(options.DnsRefreshInterval));
        }
        else
        {
            string scheme = list[0].Scheme;
            if (list.Any(u => u.Scheme is not ("http" or "https") || u.Scheme != scheme))
                throw new ArgumentException($"replica addresses are all http:// or all https:// (or one dns:///host:port), not {string.Join(", ", list)}", nameof(replicas));
            // DnsSafeHost: an IPv6 literal without its brackets, as an endpoint wants it.
            var addresses = list.Select(u => new BalancerAddress(u.DnsSafeHost, u.Port)).ToArray();
            target = new Uri("static:///replicas");
            channelOptions.Credentials = scheme == "https" ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure;
            channelOptions.ServiceProvider = new ResolverServices(new StaticResolverFactory(_ => addresses));
        }
        return new InferenceClient(target, channelOptions, apiKey, options);
    }

    static GrpcChannelOptions OneServer(InferenceClientOptions options) =>
        ChannelOptions(options, options.EnableRetries ? RetryConfig(options.MaxAttempts) : null);

    static GrpcChannelOptions ChannelOptions(InferenceClientOptions options, ServiceConfig? serviceConfig)
    {
        var channelOptions = new GrpcChannelOptions
        {
            MaxReceiveMessageSize = options.MaxReceiveMessageBytes,
            MaxSendMessageSize = options.MaxSendMessageBytes,
            HttpHandler = options.HttpHandler,
            DisposeHttpClient = true,
            ServiceConfig = serviceConfig,
        };
        if (serviceConfig?.MethodConfigs.Count > 0)
        {
            // Requests are buffered for replay up to this size; a larger one is sent once, without retries.
            channelOptions.MaxRetryBufferPerCallSize = options.MaxSendMessageBytes;
            channelOptions.MaxRetryBufferSize = Math.Max(options.MaxSendMessageBytes, 256L << 20);
        }
        return channelOptions;
    }

    /// <summary>
    /// The resolver factories a load-balanced channel looks up (as <c>IEnumerable&lt;ResolverFactory&gt;</c>, what a DI
    /// container registers); a whole container for one lookup would be a dependency for nothing. Anything else it asks
    /// for is null, so the channel takes its defaults.
    /// </summary>
    sealed class ResolverServices(ResolverFactory factory) : IServiceProvider
    {
        readonly ResolverFactory[] factories = [factory];
        public object? GetService(Type serviceType) => serviceType == typeof(IEnumerable<ResolverFactory>) ? factories : null;
    }

    /// <summary>The generated stub, for anything this class does not wrap.</summary>
    public ImageService.ImageServiceClient Images { get; }
    /// <summary>The generated JobService stub (durable jobs), for anything the typed job calls do not wrap.</summary>
    public JobService.JobServiceClient Jobs { get; }
    public Health.HealthClient Health { get; }

    /// <summary>The gRPC retry policy <see cref="InferenceClientOptions.EnableRetries"/> installs for every method of the channel.</summary>
    public static ServiceConfig RetryConfig(int maxAttempts) => new()
    {
        MethodConfigs =
        {
            new MethodConfig
            {
                Names = { MethodName.Default },
                RetryPolicy = new RetryPolicy
                {
                    MaxAttempts = maxAttempts,
                    InitialBackoff = TimeSpan.FromSeconds(1),
                    MaxBackoff = TimeSpan.FromSeconds(10),
                    BackoffMultiplier = 2,
                    RetryableStatusCodes = { StatusCode.Unavailable, StatusCode.ResourceExhausted },
                },
            },
        },
    };

    /// <summary>
    /// The service config of <see cref="ForReplicas"/>: round_robin over the resolved replicas and, for every method, a
    /// retry on UNAVAILABLE (plus RESOURCE_EXHAUSTED with <paramref name="retryResourceExhausted"/>; none when
    /// <paramref name="maxAttempts"/> is 1). The first backoff is
    /// short because the retry goes to another replica; a replica's <c>grpc-retry-pushback-ms</c> still wins.
    /// </summary>
    public static ServiceConfig ReplicaConfig(int maxAttempts, bool retryResourceExhausted)
    {
        var retry = new RetryPolicy
        {
            MaxAttempts = maxAttempts,
            InitialBackoff = TimeSpan.FromMilliseconds(200),
            MaxBackoff = TimeSpan.FromSeconds(5),
            BackoffMultiplier = 2,
            RetryableStatusCodes = { StatusCode.Unavailable },
        };
        if (retryResourceExhausted) retry.RetryableStatusCodes.Add(StatusCode.ResourceExhausted);
        var config = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
        if (maxAttempts > 1) config.MethodConfigs.Add(new MethodConfig { Names = { MethodName.Default }, RetryPolicy = retry });
        return config;
    }

    /// <summary>Generates (text-to-image, or an edit when the request has reference images): the images, seeds and timings.</summary>
    /// <param name="timeout">The call's deadline (the server stops the job between steps when it passes); null: the default.</param>
    public async Task<GenerateResponse> GenerateAsync(GenerateRequest request, TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        await Images.GenerateAsync(request, Options(timeout, cancellationToken)).ResponseAsync.ConfigureAwait(false);

    /// <summary>Generates through the stream, reporting each step (and preview, when <c>preview_every</c> is set) to <paramref name="progress"/>.</summary>
    public async Task<GenerateResponse> GenerateAsync(GenerateRequest request, IProgress<ProgressEvent> progress, TimeSpan? timeout = null,
        CancellationToken cancellationToken = default)
    {
        await foreach (var e in GenerateStreamAsync(request, timeout, cancellationToken).ConfigureAwait(false))
        {
            if (e.EventCase == GenerateEvent.EventOneofCase.Progress) progress.Report(e.Progress);
            else if (e.EventCase == GenerateEvent.EventOneofCase.Result) return e.Result;
        }
        throw new RpcException(new Status(StatusCode.Internal, "the stream ended without a result"));
    }

    /// <summary>The events of one generation: <c>queued</c>, <c>progress</c> per step, then <c>result</c>. Breaking out of the loop cancels the job.</summary>
    public async IAsyncEnumerable<GenerateEvent> GenerateStreamAsync(GenerateRequest request, TimeSpan? timeout = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var call = Images.GenerateStream(request, Options(timeout, cancellationToken));
        await foreach (var e in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            yield return e;
    }

    public async Task<IReadOnlyList<ModelInfo>> ListModelsAsync(CancellationToken cancellationToken = default) =>
        (await Images.ListModelsAsync(new ListModelsRequest(), Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false)).Models;

    /// <summary>The adapters of the server's LoRA folder (what <c>GenerateRequest.loras</c> may name), what is loaded of each, the cache and the per-request limit.</summary>
    public async Task<ListLorasResponse> ListLorasAsync(CancellationToken cancellationToken = default) =>
        await Images.ListLorasAsync(new ListLorasRequest(), Options(null, cancellationToken)).ResponseAsync.ConfigureAwait(false);

    /// <summary>grpc.health.v1 Check: SERVING once the model is loaded and warm, NOT_SERVING while loading or draining.</summary>
    /// <param name="service">"" for the whole server, or "inference.v1.ImageService".</param>
    public async Task<HealthCheckResponse.Types.ServingStatus> CheckHealthAsync(string service = "", CancellationToken cancellationToken = default)
    {
        var response = await Health.CheckAsync(new HealthCheckRequest { Service = service }, deadline: Deadline(null),
            cancellationToken: cancellationToken).ResponseAsync.ConfigureAwait(false);
        return response.Status;
    }

    CallOptions Options(TimeSpan? timeout, CancellationToken cancellationToken) =>
        new(headers, Deadline(timeout), cancellationToken);

    DateTime? Deadline(TimeSpan? timeout) => (timeout ?? defaultTimeout) is { } t ? DateTime.UtcNow + t : null;

    public void Dispose() => channel.Dispose();
}
