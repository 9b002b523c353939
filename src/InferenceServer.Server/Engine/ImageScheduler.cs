using System.Diagnostics;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Lora;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Engine;

/// <summary>
/// Admission, the bounded queue, batching and the engine thread (vLLM's split of API server / scheduler / worker, in one
/// process). Request threads reserve a queue slot, validate (<see cref="GenerationPipeline.Plan"/>, from image headers, no
/// device work), then decode references at their capped size within a byte budget, and enqueue; ONE engine
/// thread owns the device: it takes the oldest waiting job, gathers compatible jobs (same model and
/// <see cref="BatchKey"/>: size, steps, guidance, reference shapes) from anywhere in the queue up to the image and token
/// budget, waits at most <see cref="QueueOptions.GatherWindow"/> for more, and runs them as one batch. The oldest job
/// always runs next, so a job is overtaken only by batch-mates of jobs ahead of it: no starvation across sizes.
/// Seeds are per image, so batching does not change images. A request's LoRA adapters are resolved and loaded by
/// <see cref="LoraLibrary"/> (off the engine thread) before it is queued, and held until it ends; they do not change
/// the batch key: rows of one batch each run their own adapters. A job cancelled while queued leaves the queue at once; while
/// running, the pipeline drops it between steps, VAE blocks and images. Which jobs form a batch is <see cref="BatchPolicy"/> (pure); running one
/// and completing its jobs is <see cref="BatchRunner"/>; loading the models is <see cref="ServedModel.LoadAll"/>.
/// </summary>
public sealed class ImageScheduler : IImageGenerator, IHostedService, IDisposable
{
    readonly ServerOptions options;
    readonly ILogger<ImageScheduler> log;
    readonly ServerMetrics metrics;
    readonly BatchRunner runner;
    readonly LoraLibrary loras;
    readonly Func<ServerOptions, Action<string>, Action<string>, IReadOnlyList<ServedModel>> loadModels;
    volatile string phase = "starting";
    readonly LinkedList<Job> queue = new();
    readonly object gate = new();
    readonly CancellationTokenSource stopping = new();
    readonly TaskCompletionSource loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    IReadOnlyList<ServedModel> models = [];
    Thread? engine;
    bool draining;
    int running;
    int reserved;           // under gate: slots of requests being prepared, not yet queued
    long referenceBytes;    // under gate: decoded reference bytes of requests being prepared, queued or running
    int disposed;
    int lastBatchRequests, arrivedDuringBatch;   // under gate: is there concurrent load worth a gathering window?

    public ImageScheduler(IOptions<ServerOptions> options, ILogger<ImageScheduler> log, ServerMetrics metrics, LoraLibrary loras,
        IdleMemoryRelease memory, Func<ServerOptions, Action<string>, Action<string>, IReadOnlyList<ServedModel>>? loadModels = null)
    {
        this.options = options.Value;
        this.log = log;
        this.metrics = metrics;
        this.loras = loras;
        this.loadModels = loadModels ?? DefaultLoad;
        runner = new BatchRunner(log, metrics, this.options.Queue.RetryAfter);
        Memory = memory;
    }

    public IReadOnlyList<ModelDescriptor> Models => models.Select(m => m.Describe()).ToList();
    public bool Ready => !draining && models.Count > 0 && models.All(m => m.Ready);
    public string Phase => draining ? "draining" : phase;
    public event Action? ReadinessChanged;
    /// <summary>Completes when the models are loaded and warm (or faults with the load error).</summary>
    public Task Loaded => loaded.Task;
    /// <summary>Jobs waiting, not running.</summary>
    public int QueueDepth { get { lock (gate) return queue.Count; } }
    /// <summary>Returns memory to the OS once the server has been quiet a while (no batch running, no request answered).</summary>
    public IdleMemoryRelease Memory { get; }
    /// <summary>Batches the engine has run (tests check that batching happened).</summary>
    public long BatchesRun => Interlocked.Read(ref batchesRun);
    long batchesRun;

    static IReadOnlyList<ServedModel> DefaultLoad(ServerOptions o, Action<string> log, Action<string> phase) => ServedModel.LoadAll(o, log, phase);

    public Task StartAsync(CancellationToken cancellationToken)
    {
        engine = new Thread(EngineMain) { Name = "inference-engine", IsBackground = true };
        engine.Start();
        return Task.CompletedTask;
    }

    /// <summary>Stops admitting (new jobs: Unavailable), lets the queue and the running batch finish, then ends the engine.</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        BeginDrain();
        lock (gate) Monitor.PulseAll(gate);
        var done = Task.Run(() => engine?.Join(Timeout.Infinite), CancellationToken.None);
        await Task.WhenAny(done, Task.Delay(Timeout.Infinite, cancellationToken)).ConfigureAwait(false);
        if (!done.IsCompleted)
        {
            log.LogWarning("shutdown timeout: cancelling {Queued} queued and {Running} running jobs", QueueDepth, running);
            stopping.Cancel();
            lock (gate) Monitor.PulseAll(gate);
            await Task.WhenAny(done, Task.Delay(TimeSpan.FromSeconds(30), CancellationToken.None)).ConfigureAwait(false);
        }
    }

    /// <summary>From now on new jobs are refused with Unavailable; queued and running ones still finish.</summary>
    public void BeginDrain()
    {
        lock (gate)
        {
            if (draining) return;
            draining = true;
            Monitor.PulseAll(gate);
        }
        ReadinessChanged?.Invoke();
        log.LogInformation("draining: {Queued} queued, {Running} running", QueueDepth, running);
    }

    public async Task<JobResult> GenerateAsync(ImageJobRequest request, Action<JobEvent>? onEvent = null, CancellationToken cancellationToken = default)
    {
        var admitted = Stopwatch.StartNew();
        if (draining) throw new ServiceException(ErrorKind.Unavailable, "the server is shutting down", retryAfter: options.Queue.RetryAfter);
        if (!loaded.Task.IsCompletedSuccessfully)
            throw new ServiceException(ErrorKind.Unavailable, loaded.Task.IsFaulted ? "the model failed to load" : "the model is still loading", retryAfter: TimeSpan.FromSeconds(5));
        var model = FindModel(request.Model);
        Validate(request);
        // A queue slot is reserved before anything costly (adapter loads, reference headers and decoding): a full queue
        // refuses at once, and concurrent requests cannot all pass a check and then overfill it.
        using var reservation = Reserve();
        // Held until this method returns: by then the job has ended (completed, failed, cancelled or never queued).
        using var lease = await AcquireLoras(model, request, cancellationToken).ConfigureAwait(false);
        PreparedRequest prepared;
        try { prepared = model.Pipeline.Plan(lease.Uses.Count == 0 ? request.Generation : request.Generation with { Loras = lease.Uses }); }
        catch (RequestException e) { throw ServiceException.FromRequest(e); }
        // The references' decoded bytes (known from their headers) count against a budget until the job ends.
        reservation.HoldReferenceBytes(prepared.ReferenceBytes);
        try { model.Pipeline.DecodeReferences(prepared); }
        catch (RequestException e) { throw ServiceException.FromRequest(e); }

        // A deadline already past fires at once; anything beyond a day (incl. "infinite" gRPC deadlines) is a day.
        var timeout = request.Timeout ?? options.Queue.DefaultTimeout;
        timeout = timeout < TimeSpan.FromMilliseconds(1) ? TimeSpan.FromMilliseconds(1) : timeout > TimeSpan.FromDays(1) ? TimeSpan.FromDays(1) : timeout;
        CancellationTokenSource deadline, linked;
        Job job;
        int position;
        lock (gate)
        {
            if (draining) throw new ServiceException(ErrorKind.Unavailable, "the server is shutting down", retryAfter: options.Queue.RetryAfter);
            // Made only once admitted: a refused request leaves no timer behind.
            deadline = new CancellationTokenSource(timeout);
            linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, deadline.Token, stopping.Token);
            job = new Job(request, model, prepared, linked.Token, onEvent, admitted);
            reservation.Enqueued();
            job.Node = queue.AddLast(job);
            if (running > 0) arrivedDuringBatch++;
            position = queue.Count - 1 + running;
            metrics.QueueDepth(queue.Count);
            runner.SafeEvent(job, new JobEvent.Queued(position));   // under the lock: always before the engine's first progress event
            Monitor.PulseAll(gate);
        }
        using var registration = linked.Token.Register(() => CancelQueued(job));
        try
        {
            return await job.Completion.Task.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            if (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
                throw new ServiceException(ErrorKind.DeadlineExceeded, $"the request did not finish within its deadline ({timeout.TotalSeconds:0.###} s)");
            if (stopping.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
                throw new ServiceException(ErrorKind.Unavailable, "the server shut down before the request finished");
            throw new ServiceException(ErrorKind.Cancelled, "the request was cancelled by the client");
        }
        finally
        {
            linked.Dispose();
            deadline.Dispose();
        }
    }

    public JobPlan Plan(ImageJobRequest request)
    {
        if (!loaded.Task.IsCompletedSuccessfully)
            throw new ServiceException(ErrorKind.Unavailable, loaded.Task.IsFaulted ? "the model failed to load" : "the model is still loading", retryAfter: TimeSpan.FromSeconds(5));
        var model = FindModel(request.Model);
        Validate(request);
        loras.Check(model, request.Loras);
        PreparedRequest prepared;
        try { prepared = model.Pipeline.Plan(request.Generation); }
        catch (RequestException e) { throw ServiceException.FromRequest(e); }
        var k = prepared.Key;
        string key = string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{k.Width}x{k.Height}/{k.Steps}/{k.Guidance}/{k.References}");
        return new JobPlan(model.Name, key, prepared.Seed, prepared.Steps);
    }

    /// <summary>A queue slot for a request being prepared (or 429 at once); see <see cref="Reservation"/>.</summary>
    Reservation Reserve()
    {
        lock (gate)
        {
            if (draining) throw new ServiceException(ErrorKind.Unavailable, "the server is shutting down", retryAfter: options.Queue.RetryAfter);
            if (queue.Count + reserved >= options.Queue.MaxQueued)
                throw new ServiceException(ErrorKind.ResourceExhausted,
                    $"the queue is full ({options.Queue.MaxQueued} requests waiting); retry after {options.Queue.RetryAfter.TotalSeconds:0.#} s",
                    retryAfter: options.Queue.RetryAfter);
            reserved++;
            return new Reservation(this);
        }
    }

    /// <summary>
    /// A request's claim on the queue while it is prepared: a slot until it is enqueued, and its decoded reference bytes
    /// against <see cref="QueueOptions.MaxReferenceBytes"/> until the request ends. Disposed when the request returns.
    /// </summary>
    sealed class Reservation(ImageScheduler scheduler) : IDisposable
    {
        bool slot = true;
        long bytes;

        public void HoldReferenceBytes(long wanted)
        {
            if (wanted == 0) return;
            var s = scheduler;
            long budget = s.options.Queue.MaxReferenceBytes;
            if (wanted > budget)
                throw new ServiceException(ErrorKind.TooLarge,
                    $"image: the references decode to {wanted:N0} bytes at their capped sizes; the server holds at most {budget:N0} bytes of decoded references (InferenceServer:Queue:MaxReferenceBytes)", "image");
            lock (s.gate)
            {
                if (s.referenceBytes + wanted > budget)
                    throw new ServiceException(ErrorKind.ResourceExhausted,
                        $"the server holds {s.referenceBytes:N0} bytes of decoded references for queued requests and this request needs {wanted:N0} more (limit {budget:N0}); retry after {s.options.Queue.RetryAfter.TotalSeconds:0.#} s",
                        retryAfter: s.options.Queue.RetryAfter);
                s.referenceBytes += wanted;
                bytes = wanted;
                s.metrics.ReferenceBytes(s.referenceBytes);
            }
        }

        /// <summary>Under the scheduler's lock: the slot becomes a queued job.</summary>
        public void Enqueued()
        {
            scheduler.reserved--;
            slot = false;
        }

        public void Dispose()
        {
            var s = scheduler;
            lock (s.gate)
            {
                if (slot) { s.reserved--; slot = false; }
                s.referenceBytes -= bytes;
                if (bytes != 0) s.metrics.ReferenceBytes(s.referenceBytes);
                bytes = 0;
            }
        }
    }

    /// <summary>The request's adapters, loaded off the engine thread (a load in progress is shared with other requests).</summary>
    async Task<LoraLease> AcquireLoras(ServedModel model, ImageJobRequest request, CancellationToken cancellationToken)
    {
        try { return await loras.AcquireAsync(model, request.Loras, cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw new ServiceException(ErrorKind.Cancelled, "the request was cancelled by the client while its adapters loaded");
        }
        catch (ObjectDisposedException)
        {
            throw new ServiceException(ErrorKind.Unavailable, "the server is shutting down", retryAfter: options.Queue.RetryAfter);
        }
    }

    ServedModel FindModel(string? name)
    {
        if (string.IsNullOrEmpty(name)) return models[0];
        return models.FirstOrDefault(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase))
            ?? throw new ServiceException(ErrorKind.NotFound, $"model {ClientText.Quote(name)} is not served here; served: {string.Join(", ", models.Select(m => m.Name))}", "model");
    }

    /// <summary>What only the server knows; everything about the generation itself is checked once by the pipeline's Prepare.</summary>
    static void Validate(ImageJobRequest r)
    {
        if (r.PreviewEvery < 0) throw ServiceException.Invalid("preview_every", $"preview_every: {r.PreviewEvery}, must be 0 or more");
    }

    void CancelQueued(Job job)
    {
        bool removed = false;
        lock (gate)
        {
            if (job.Node is { List: not null } node)
            {
                queue.Remove(node);
                removed = true;
                metrics.QueueDepth(queue.Count);
            }
        }
        if (removed) job.Completion.TrySetCanceled(job.Token);
    }

    void EngineMain()
    {
        try
        {
            if (options.Models.Count == 0)
                log.LogWarning("""
                    ************************************************************************************************
                    No --model given: serving the embedded TINY RANDOM-WEIGHT model. Its images are NOISE.
                    It is for a first try, tests and load measurements; serve a real model folder with --model DIR.
                    ************************************************************************************************
                    """);
            var started = Stopwatch.StartNew();
            phase = "loading";
            models = loadModels(options, line => log.LogInformation("{Line}", line), p => phase = p);
            log.LogInformation("loaded in {Seconds:F1} s", started.Elapsed.TotalSeconds);
            foreach (var m in models)
            {
                var sw = Stopwatch.StartNew();
                phase = $"warming up {m.Name} (64x64, 1 step)";
                log.LogInformation("{Phase}", phase);
                m.Pipeline.WarmUp();
                m.Ready = true;
                log.LogInformation("model {Model} warm in {Ms:0} ms", m.Name, sw.Elapsed.TotalMilliseconds);
            }
            phase = "ready";
            log.LogInformation("ready {Seconds:F1} s after start", started.Elapsed.TotalSeconds);
            ReadinessChanged?.Invoke();
            loaded.TrySetResult();
        }
        catch (Exception e)
        {
            phase = $"failed: {e.Message}";
            log.LogCritical(e, "model load failed: {Message}", e.Message);
            loaded.TrySetException(e);
            return;
        }

        while (true)
        {
            List<Job> batch;
            lock (gate)
            {
                if (queue.Count == 0) Memory.Idle();
                while (queue.Count == 0 && !(draining && running == 0))
                    Monitor.Wait(gate);
                if (queue.Count == 0) break;                                  // draining and nothing left
                batch = Gather();
                // Wait for companions only under concurrent load (the last batch was shared, or requests arrived while it ran):
                // a lone client must not pay the window on every request.
                // Requests being admitted right now (a job runner's claimed batch, a client's burst) count as well.
                bool concurrent = lastBatchRequests > 1 || arrivedDuringBatch > 0 || queue.Count > 1 || reserved > 0;
                if (concurrent && Images(batch) < options.Queue.MaxBatchImages && options.Queue.GatherWindow > TimeSpan.Zero && !draining)
                {
                    // A short window for compatible requests arriving together (a client's burst); jobs stay queued meanwhile.
                    var until = Stopwatch.GetTimestamp() + (long)(options.Queue.GatherWindow.TotalSeconds * Stopwatch.Frequency);
                    while (true)
                    {
                        int ms = (int)Math.Ceiling((until - Stopwatch.GetTimestamp()) * 1000.0 / Stopwatch.Frequency);
                        if (ms <= 0 || !Monitor.Wait(gate, ms)) break;
                        if (queue.Count == 0 || Images(Gather()) >= options.Queue.MaxBatchImages) break;
                    }
                    if (queue.Count == 0) continue;
                    batch = Gather();
                }
                Memory.Busy();
                foreach (var j in batch) queue.Remove(j.Node!);
                running = batch.Count;
                lastBatchRequests = batch.Count;
                arrivedDuringBatch = 0;
                metrics.QueueDepth(queue.Count);
            }
            try { if (runner.Run(batch)) Interlocked.Increment(ref batchesRun); }
            finally { lock (gate) { running = 0; Monitor.PulseAll(gate); } }
        }
        log.LogInformation("engine stopped");
    }

    static int Images(List<Job> batch) => batch.Sum(j => j.Prepared.Count);

    /// <summary>The next batch by <see cref="BatchPolicy"/> over the queue (jobs stay queued).</summary>
    List<Job> Gather()
    {
        // Live requests head batches before durable jobs (stable order within each); a compatible job still joins a live batch.
        var queued = queue.OrderBy(j => j.Request.Durable ? 1 : 0).ToList();
        var picked = new BatchPolicy(options.Queue.MaxBatchImages, options.Queue.MaxBatchTokens).Select(queued.Select(Candidate).ToList());
        return picked.Select(i => queued[i]).ToList();
    }

    static BatchCandidate Candidate(Job j) =>
        new(j.Model, j.Prepared.Key, j.Prepared.Count, j.Prepared.Count * j.Model.Pipeline.Backend.Geometry.Tokens(j.Prepared.Width, j.Prepared.Height));

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 1) return;     // registered under three service types
        stopping.Cancel();
        lock (gate) { draining = true; Monitor.PulseAll(gate); }
        engine?.Join(TimeSpan.FromSeconds(30));
        foreach (var m in models) m.Dispose();
        stopping.Dispose();
    }
}
