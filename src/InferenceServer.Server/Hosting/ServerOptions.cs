namespace InferenceServer.Server.Hosting;

/// <summary>
/// Everything the server can be told, bound from configuration section <c>InferenceServer</c>: appsettings.json,
/// environment variables (<c>InferenceServer__Queue__MaxQueued=128</c>) and the serve verb's options, in that order of precedence (last wins).
/// </summary>
public sealed class ServerOptions
{
    public const string Section = "InferenceServer";

    /// <summary>
    /// Model folders to serve, any family (FLUX.2 BFL or diffusers, Z-Image diffusers or single-file): "DIR" (named after
    /// the folder) or "NAME=DIR"; the first is the default for requests that name none. Empty: the embedded tiny
    /// random-weight model (noise images).
    /// </summary>
    public List<string> Models { get; set; } = [];
    /// <summary>Name clients use for the model when exactly one is served; null: from its entry in <see cref="Models"/>.</summary>
    public string? ModelName { get; set; }
    /// <summary>Weights dtype: bf16, fp32 (fp8/int8 where the build has them).</summary>
    public string DType { get; set; } = "bf16";
    /// <summary>auto (CUDA when present), cpu, cuda, cuda:N.</summary>
    public string Device { get; set; } = "auto";
    /// <summary>CPU weights as memory maps of the model files: auto (files on a read-only filesystem), on (every file: never modify them in place while serving), off.</summary>
    public string MemoryMap { get; set; } = "auto";
    /// <summary>Where the embedded tiny model is written on first start; null: $XDG_CACHE_HOME or ~/.cache /inference-server.</summary>
    public string? CacheDirectory { get; set; }

    /// <summary>Address to bind (0.0.0.0: every interface; 127.0.0.1: loopback only).</summary>
    public string BindAddress { get; set; } = "0.0.0.0";
    /// <summary>OpenAI-compatible HTTP/1.1 API, /metrics, /healthz. 0: any free port.</summary>
    public int HttpPort { get; set; } = 8080;
    /// <summary>gRPC (HTTP/2 cleartext). 0: any free port.</summary>
    public int GrpcPort { get; set; } = 50051;

    /// <summary>API keys accepted as <c>Authorization: Bearer KEY</c> (HTTP) or <c>authorization</c> metadata (gRPC). Empty: no auth.</summary>
    public List<string> ApiKeys { get; set; } = [];

    public QueueOptions Queue { get; set; } = new();
    public LimitOptions Limits { get; set; } = new();
    public FileStoreOptions Files { get; set; } = new();
    public LoraOptions Lora { get; set; } = new();
    public JobOptions Jobs { get; set; } = new();

    /// <summary>How long SIGTERM waits for in-flight requests before exiting anyway.</summary>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromMinutes(2);
}

public sealed class QueueOptions
{
    /// <summary>Jobs waiting (not running). Beyond it: 429 / RESOURCE_EXHAUSTED at once.</summary>
    public int MaxQueued { get; set; } = 64;
    /// <summary>Images (rows) in one engine batch.</summary>
    public int MaxBatchImages { get; set; } = 4;
    /// <summary>Output image tokens (rows x (W/16) x (H/16)) in one batch: the memory budget.</summary>
    public long MaxBatchTokens { get; set; } = 4 * 4096 + 4 * 4096;
    /// <summary>Under concurrent load (the last batch was shared or requests arrived while it ran), how long the engine waits for compatible requests to join a batch; a lone client never waits.</summary>
    public TimeSpan GatherWindow { get; set; } = TimeSpan.FromMilliseconds(10);
    /// <summary>Default request deadline when the client sets none.</summary>
    public TimeSpan DefaultTimeout { get; set; } = TimeSpan.FromMinutes(10);
    /// <summary>
    /// Bytes of decoded reference images held by admitted requests (RGB at their capped sizes: 12 MB for one 2024^2
    /// reference). Beyond it a request is refused with 429 before its references are decoded; one whose references alone
    /// exceed it, with 413.
    /// </summary>
    public long MaxReferenceBytes { get; set; } = 1L << 30;
    /// <summary>
    /// After this long with nothing to run, the server returns freed memory to the OS (a decommitting GC and
    /// <c>malloc_trim</c>), so RSS falls back after a burst; negative: never.
    /// </summary>
    public TimeSpan ReleaseMemoryAfterIdle { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>Retry-After sent with 429 when the queue is full.</summary>
    public TimeSpan RetryAfter { get; set; } = TimeSpan.FromSeconds(2);
}

public sealed class LimitOptions
{
    /// <summary>
    /// HTTP request body and gRPC message size. 64 MiB: what a request can need, ten references sent at the pixel cap
    /// (1024^2 each with several, 2024^2 alone) even as uncompressed PNG in base64 JSON; larger originals are scaled down
    /// to the cap anyway, so a client sending 4K photos should resize them or raise this.
    /// </summary>
    public long MaxRequestBytes { get; set; } = 64L << 20;
    /// <summary>Response message size (n images at 4K as PNG).</summary>
    public long MaxResponseBytes { get; set; } = 512L << 20;
    /// <summary>Pixels of one input image, checked from its header before decoding.</summary>
    public long MaxInputPixels { get; set; } = 64L << 20;
    public int MaxPromptChars { get; set; } = 8000;
    public int MaxImages { get; set; } = 10;
    public int MaxReferences { get; set; } = 10;
    public int MaxSteps { get; set; } = 100;
    public int MinSide { get; set; } = 64;
    public int MaxSide { get; set; } = 4096;
    public long MaxOutputPixels { get; set; } = 4096L * 4096;
}

public sealed class FileStoreOptions
{
    /// <summary>How long a <c>response_format=url</c> image stays downloadable.</summary>
    public TimeSpan Expiry { get; set; } = TimeSpan.FromHours(1);
    /// <summary>Bytes kept in memory for url responses; the oldest are dropped first beyond it.</summary>
    public long MaxBytes { get; set; } = 1L << 30;
    /// <summary>Base of the returned urls (e.g. https://images.example.com); null: the request's own scheme and host.</summary>
    public string? PublicBaseUrl { get; set; }
}

/// <summary>LoRA adapters: where they are found, how many a request may name, how many bytes of them stay loaded, which are merged.</summary>
public sealed class LoraOptions
{
    /// <summary>Folder of adapter files (<c>*.safetensors</c>, not searched recursively); a request names one by its file name without the extension. Null: requests can name none.</summary>
    public string? Directory { get; set; }
    /// <summary>Bytes of loaded adapters (all served models together) kept for later requests; the least recently used beyond it are dropped once no request holds them.</summary>
    public long CacheBytes { get; set; } = 2L << 30;
    /// <summary>Adapters one request may name (the pipeline's <c>MaxLorasPerRequest</c>).</summary>
    public int MaxPerRequest { get; set; } = 4;
    /// <summary>Bound of a request's |scale| (the pipeline's <c>MaxLoraScale</c>).</summary>
    public double MaxScale { get; set; } = 16;
    /// <summary>
    /// Adapters merged into the weights when the models load, as <c>NAME[:SCALE]</c> (a name in <see cref="Directory"/> or a
    /// path to a .safetensors file; scale 1 when absent): each goes into every served model whose layers it fits, and the
    /// server refuses to start when one fits none.
    /// </summary>
    public List<string> Merge { get; set; } = [];
}

/// <summary>Durable jobs (docs/jobs-api.md): where they are stored, how this replica claims them, how long results stay, webhooks.</summary>
public sealed class JobOptions
{
    /// <summary>
    /// <c>sqlite:PATH</c> (one machine), <c>postgres://USER[:PASSWORD]@HOST[:PORT]/DB</c> or an Npgsql connection string
    /// (any number of replicas sharing one queue), or <c>off</c>. Null: <c>sqlite:</c> jobs.db under <see cref="DataDirectory"/>.
    /// </summary>
    public string? Store { get; set; }
    /// <summary>Where the default SQLite store lives; null: $XDG_DATA_HOME or ~/.local/share /inference-server.</summary>
    public string? DataDirectory { get; set; }
    /// <summary>This replica's id on the jobs it runs; null: the host name and a short random suffix (logged at start).</summary>
    public string? ReplicaId { get; set; }
    /// <summary>How long a claim holds a job without a heartbeat; a replica that dies loses its jobs after this long.</summary>
    public TimeSpan Lease { get; set; } = TimeSpan.FromSeconds(30);
    /// <summary>Longest wait for new work without a notification (other replicas' expired leases, a lost LISTEN connection).</summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>How long a finished job and its images are kept.</summary>
    public TimeSpan Retention { get; set; } = TimeSpan.FromHours(24);
    /// <summary>Bytes of stored result images; beyond it the oldest finished jobs are deleted before their retention ends.</summary>
    public long MaxResultBytes { get; set; } = 20L << 30;
    /// <summary>Queued jobs one API key may have; beyond it submissions are refused with 429 / RESOURCE_EXHAUSTED.</summary>
    public int MaxQueuedPerKey { get; set; } = 10_000;
    /// <summary>Jobs in one SubmitJobs call.</summary>
    public int MaxJobsPerCall { get; set; } = 1000;
    /// <summary>Secret webhooks are signed with (Standard Webhooks, <c>whsec_</c> + base64), the same on every replica; null: submissions with a webhook_url are refused.</summary>
    public string? WebhookSecret { get; set; }
    /// <summary>Hosts, addresses or CIDR networks webhooks may reach although private, loopback or link-local (refused otherwise).</summary>
    public List<string> WebhookAllow { get; set; } = [];
    /// <summary>Waits between webhook tries after a failure or non-2xx answer: 6 tries over about 10 minutes by default.</summary>
    public List<TimeSpan> WebhookRetryDelays { get; set; } =
        [TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(90), TimeSpan.FromMinutes(3), TimeSpan.FromMinutes(5)];
    /// <summary>How long one webhook POST may take.</summary>
    public TimeSpan WebhookTimeout { get; set; } = TimeSpan.FromSeconds(10);
}
