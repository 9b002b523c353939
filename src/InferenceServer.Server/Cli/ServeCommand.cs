using InferenceServer.Models.Weights;
using InferenceServer.Server.Engine;
using Microsoft.Extensions.DependencyInjection;
using System.CommandLine;
using InferenceServer.Server.Hosting;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server serve [--model [NAME=]DIR]... [--http-port 8080] [--grpc-port 50051] [--lora-dir DIR] [--lora-merge NAME[:SCALE]]... ...</c>: the gRPC + OpenAI-compatible HTTP
/// server. Every option is also configuration (appsettings.json next to the binary, environment <c>InferenceServer__HttpPort</c>);
/// an option given here wins. Without <c>--model</c> it serves the embedded tiny random-weight model (noise images).
/// SIGTERM / Ctrl+C: stop admitting, finish every in-flight request, exit.
/// </summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<string[]>("--model") { Description = "Model folder of any family, DIR or NAME=DIR; repeat to serve several (the first is the default); none: the embedded tiny random model (noise)" };
        var name = new Option<string?>("--model-name") { Description = "Name clients use for the model (default: the model card's)" };
        var httpPort = new Option<int?>("--http-port") { Description = "OpenAI-compatible HTTP port (default 8080; 0: any free port)" };
        var grpcPort = new Option<int?>("--grpc-port") { Description = "gRPC port (default 50051; 0: any free port)" };
        var bind = new Option<string?>("--bind") { Description = "Address to listen on (default 0.0.0.0)" };
        var dtype = new Option<string?>("--dtype") { Description = "Weights: bf16 (default), fp32, fp8 or int8 (8-bit transformer weights, bf16 compute)" };
        var mmap = new Option<string?>("--mmap") { Description = "CPU weights as memory maps of the files: auto (default: files on a read-only filesystem), on (never modify the files in place while serving), off" };
        mmap.AcceptOnlyFromAmong(WeightMappings.Names);
        var apiKey = new Option<string[]>("--api-key") { Description = "Accepted API key (repeat for several); none: no auth" };
        var maxQueue = new Option<int?>("--max-queue") { Description = "Requests waiting before 429 / RESOURCE_EXHAUSTED (default 64)" };
        var maxBatch = new Option<int?>("--max-batch") { Description = "Images per engine batch (default 4)" };
        var loraDir = new Option<string?>("--lora-dir") { Description = "Folder of LoRA adapters (*.safetensors) requests may name, by file name without the extension" };
        var loraMerge = new Option<string[]>("--lora-merge") { Description = "NAME[:SCALE] (a name in --lora-dir or a .safetensors path): merged into the weights of every served model it fits, at load; repeatable" };
        var loraCache = new Option<long?>("--lora-cache-bytes") { Description = "Bytes of loaded adapters kept for later requests (default 2 GiB; least recently used dropped first)" };
        var maxLoras = new Option<int?>("--max-loras") { Description = "Adapters one request may name (default 4)" };
        var keepRunning = new Option<bool>("--keep-running-on-load-failure") { Description = "Stay up (healthz 200, every request 503) when a model fails to load, instead of exiting with code 3" };
        var jobs = new Option<string?>("--jobs") { Description = "Durable job store: sqlite:PATH (default: jobs.db under --data-dir), postgres://USER@HOST:PORT/DB or an Npgsql connection string (replicas share it), or off" };
        var dataDir = new Option<string?>("--data-dir") { Description = "Folder of the default SQLite job store (default: $XDG_DATA_HOME or ~/.local/share /inference-server)" };
        var replicaId = new Option<string?>("--replica-id") { Description = "This replica's id on the jobs it runs (default: host name + a short random suffix)" };
        var webhookSecret = new Option<string?>("--webhook-secret") { Description = "whsec_... secret job webhooks are signed with (Standard Webhooks)" };
        var webhookAllow = new Option<string[]>("--webhook-allow") { Description = "HOST, IP or CIDR webhooks may reach although private/loopback/link-local; repeatable" };
        var retention = new Option<TimeSpan?>("--job-retention") { Description = "How long finished jobs and their images are kept (default 1.00:00:00, 24 h)" };
        var maxPerKey = new Option<int?>("--max-queued-jobs-per-key") { Description = "Queued jobs one API key may have (default 10000)" };
        var command = new Command("serve", "Serve gRPC (inference.v1.ImageService, JobService) and the OpenAI-compatible HTTP API")
        {
            model, name, httpPort, grpcPort, bind, dtype, mmap, apiKey, maxQueue, maxBatch, loraDir, loraMerge, loraCache, maxLoras, keepRunning,
            jobs, dataDir, replicaId, webhookSecret, webhookAllow, retention, maxPerKey,
        };
        command.SetAction(async (r, ct) =>
        {
            var app = ServerHost.Build([], o =>
            {
                if (r.GetValue(model) is { Length: > 0 } m) o.Models = [.. m];
                if (r.GetValue(name) is { } n) o.ModelName = n;
                if (r.GetValue(httpPort) is { } hp) o.HttpPort = hp;
                if (r.GetValue(grpcPort) is { } gp) o.GrpcPort = gp;
                if (r.GetValue(bind) is { } b) o.BindAddress = b;
                if (r.GetValue(dtype) is { } d) o.DType = d;
                if (r.GetValue(mmap) is { } mm) o.MemoryMap = mm;
                if (r.GetValue(apiKey) is { Length: > 0 } keys) o.ApiKeys = [.. keys];
                if (r.GetValue(maxQueue) is { } q) o.Queue.MaxQueued = q;
                if (r.GetValue(maxBatch) is { } mb) o.Queue.MaxBatchImages = mb;
                if (r.GetValue(loraDir) is { } ld) o.Lora.Directory = ld;
                if (r.GetValue(loraMerge) is { Length: > 0 } merge) o.Lora.Merge = [.. merge];
                if (r.GetValue(loraCache) is { } lc) o.Lora.CacheBytes = lc;
                if (r.GetValue(maxLoras) is { } ml) o.Lora.MaxPerRequest = ml;
                if (r.GetValue(jobs) is { } js) o.Jobs.Store = js;
                if (r.GetValue(dataDir) is { } dd) o.Jobs.DataDirectory = dd;
                if (r.GetValue(replicaId) is { } ri) o.Jobs.ReplicaId = ri;
                if (r.GetValue(webhookSecret) is { } ws) o.Jobs.WebhookSecret = ws;
                if (r.GetValue(webhookAllow) is { Length: > 0 } wa) o.Jobs.WebhookAllow = [.. wa];
                if (r.GetValue(retention) is { } rt) o.Jobs.Retention = rt;
                if (r.GetValue(maxPerKey) is { } mk) o.Jobs.MaxQueuedPerKey = mk;
            });
            // A model that fails to load stops the process with the reason and exit code 3, so a supervisor restarts it (or
            // alerts) instead of keeping a process that answers every request with 503.
            var scheduler = app.Services.GetRequiredService<ImageScheduler>();
            bool keep = r.GetValue(keepRunning);
            if (!keep) _ = scheduler.Loaded.ContinueWith(t => { if (t.IsFaulted) app.Lifetime.StopApplication(); }, TaskScheduler.Default);
            try { await app.RunAsync(); }
            catch (OperationCanceledException) when (scheduler.Loaded.IsFaulted) { } // stopped while the host was still starting
            if (!keep && scheduler.Loaded.IsFaulted)
            {
                var e = scheduler.Loaded.Exception!.GetBaseException();
                r.InvocationConfiguration.Error.WriteLine($"error: model load failed: {e.Message.ReplaceLineEndings(" ")}");
                return 3;
            }
            return 0;
        });
        return command;
    }
}
