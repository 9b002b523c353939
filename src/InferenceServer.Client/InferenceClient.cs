using System.Runtime.CompilerServices;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
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
    /// <summary>Attempts per call when <see cref="EnableRetries"/> (first try included; gRPC caps it at 5).</summary>
    public int MaxAttempts { get; init; } = 4;
    /// <summary>Deadline of calls that give none; null: no deadline.</summary>
    public TimeSpan? DefaultTimeout { get; init; }
    /// <summary>Custom transport (tests, TLS settings, proxies); null: a <see cref="SocketsHttpHandler"/>.</summary>
    public HttpMessageHandler? HttpHandler { get; init; }
}

/// <summary>
/// A small typed client for inference.v1.ImageService and grpc.health.v1.Health. Thread-safe; keep one per server and reuse
/// it (it owns one HTTP/2 connection pool). Errors are <see cref="RpcException"/>s: the status code says what happened,
/// the <c>field</c> trailer names the request field at fault, <c>retry-after</c> says when to try again.
/// </summary>
/// <example><code>
/// using var client = new InferenceClient(new Uri("http://localhost:50051"), apiKey: "secret");
/// var response = await client.GenerateAsync(new GenerateRequest { Prompt = "a red fox", Width = 1024, Height = 768 });
/// // With adapters of the server's --lora-dir: new GenerateRequest { ..., Loras = { new LoraRef { Name = "watercolor", Scale = 0.8 } } }
/// File.WriteAllBytes("fox.png", response.Images[0].Data.ToByteArray());
/// </code></example>
public sealed class InferenceClient : IDisposable
{
    readonly GrpcChannel channel;
    readonly Metadata? headers;
    readonly TimeSpan? defaultTimeout;

    /// <param name="address">The server's gRPC address, e.g. http://host:50051 (cleartext HTTP/2) or https://host.</param>
    /// <param name="apiKey">Sent as <c>authorization: Bearer KEY</c> on image calls; null when the server has no keys.</param>
    public InferenceClient(Uri address, string? apiKey = null, InferenceClientOptions? options = null)
    {
        options ??= new InferenceClientOptions();
        var channelOptions = new GrpcChannelOptions
        {
            MaxReceiveMessageSize = options.MaxReceiveMessageBytes,
            MaxSendMessageSize = options.MaxSendMessageBytes,
            HttpHandler = options.HttpHandler,
            DisposeHttpClient = true,
        };
        if (options.EnableRetries)
        {
            channelOptions.ServiceConfig = RetryConfig(options.MaxAttempts);
            // Requests are buffered for replay up to this size; a larger one is sent once, without retries.
            channelOptions.MaxRetryBufferPerCallSize = options.MaxSendMessageBytes;
            channelOptions.MaxRetryBufferSize = Math.Max(options.MaxSendMessageBytes, 256L << 20);
        }
        channel = GrpcChannel.ForAddress(address, channelOptions);
        Images = new ImageService.ImageServiceClient(channel);
        Health = new Health.HealthClient(channel);
        if (apiKey is not null) headers = new Metadata { { "authorization", "Bearer " + apiKey } };
        defaultTimeout = options.DefaultTimeout;
    }

    /// <summary>The generated stub, for anything this class does not wrap.</summary>
    public ImageService.ImageServiceClient Images { get; }
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
