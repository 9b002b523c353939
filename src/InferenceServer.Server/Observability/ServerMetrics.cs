using System.Diagnostics;
using InferenceServer.Pipeline.Generation;
using Prometheus;

namespace InferenceServer.Server.Observability;

/// <summary>
/// The Prometheus series served at <c>/metrics</c>: queue depth, decoded reference bytes, batch sizes, per-stage latency, images, errors by code,
/// LoRA adapter loads, evictions and loaded bytes, process memory (device memory is not exported yet). One instance per server, on its own registry (tests run several servers in one process).
/// </summary>
public sealed class ServerMetrics
{
    static readonly double[] LatencyBuckets = Histogram.ExponentialBuckets(0.001, 2, 20);   // 1 ms .. ~9 min

    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();
    readonly Gauge queueDepth, referenceBytes;
    readonly Histogram batchRequests, batchImages, stageSeconds, requestSeconds, queueSeconds;
    readonly Counter images, requests, errors;
    readonly Gauge processMemory, managedMemory;
    readonly Counter loraLoads, loraEvictions;
    readonly Histogram loraLoadSeconds;
    readonly Gauge loraBytes;

    public ServerMetrics()
    {
        var f = Metrics.WithCustomRegistry(Registry);
        queueDepth = f.CreateGauge("inference_queue_depth", "Requests waiting for the engine (not running).");
        referenceBytes = f.CreateGauge("inference_reference_bytes", "Decoded reference-image bytes held by admitted requests (bounded by Queue:MaxReferenceBytes).");
        batchRequests = f.CreateHistogram("inference_batch_requests", "Requests per engine batch.",
            new HistogramConfiguration { Buckets = [1, 2, 3, 4, 6, 8, 12, 16, 32] });
        batchImages = f.CreateHistogram("inference_batch_images", "Images (rows) per engine batch.",
            new HistogramConfiguration { Buckets = [1, 2, 3, 4, 6, 8, 12, 16, 32] });
        stageSeconds = f.CreateHistogram("inference_stage_seconds", "Time per pipeline stage per request.",
            new HistogramConfiguration { LabelNames = ["stage"], Buckets = LatencyBuckets });
        requestSeconds = f.CreateHistogram("inference_request_seconds", "Admission to result, per completed request.",
            new HistogramConfiguration { LabelNames = ["origin"], Buckets = LatencyBuckets });
        queueSeconds = f.CreateHistogram("inference_queue_seconds", "Time waiting in the queue per completed request.",
            new HistogramConfiguration { Buckets = LatencyBuckets });
        images = f.CreateCounter("inference_images_total", "Images generated.", new CounterConfiguration { LabelNames = ["origin"] });
        requests = f.CreateCounter("inference_requests_total", "Requests answered, by front end and status code.",
            new CounterConfiguration { LabelNames = ["origin", "code"] });
        errors = f.CreateCounter("inference_errors_total", "Requests answered with an error, by front end and code.",
            new CounterConfiguration { LabelNames = ["origin", "code"] });
        loraLoads = f.CreateCounter("inference_lora_loads_total", "LoRA adapter files loaded for a model, by result (ok, refused).",
            new CounterConfiguration { LabelNames = ["result"] });
        loraLoadSeconds = f.CreateHistogram("inference_lora_load_seconds", "Time to read and resolve one adapter file.",
            new HistogramConfiguration { Buckets = LatencyBuckets });
        loraEvictions = f.CreateCounter("inference_lora_evictions_total", "Loaded adapters dropped to keep within the adapter cache budget.");
        loraBytes = f.CreateGauge("inference_lora_loaded_bytes", "Bytes of loaded LoRA adapters (cached or held by requests).");
        processMemory = f.CreateGauge("inference_process_resident_bytes", "Resident set size of the server process.");
        managedMemory = f.CreateGauge("inference_managed_heap_bytes", "Managed heap size.");
        Jobs = new JobMetrics(f);
        Registry.AddBeforeCollectCallback(() =>
        {
            using var p = Process.GetCurrentProcess();
            processMemory.Set(p.WorkingSet64);
            managedMemory.Set(GC.GetTotalMemory(false));
        });
    }

    /// <summary>Durable jobs.</summary>
    public JobMetrics Jobs { get; }

    public void QueueDepth(int depth) => queueDepth.Set(depth);
    public void ReferenceBytes(long bytes) => referenceBytes.Set(bytes);

    public void Batch(int requestCount, int imageCount)
    {
        batchRequests.Observe(requestCount);
        batchImages.Observe(imageCount);
    }

    public void Completed(string origin, GenerationResult result, double queueMilliseconds)
    {
        images.WithLabels(Origin(origin)).Inc(result.Images.Count);
        queueSeconds.Observe(queueMilliseconds / 1000);
        foreach (var group in result.Timings.GroupBy(t => t.Name))
            stageSeconds.WithLabels(group.Key).Observe(group.Sum(t => t.Milliseconds) / 1000);
    }

    /// <summary>A request answered (by a front end): <paramref name="code"/> is the HTTP status or gRPC status name.</summary>
    public void Answered(string origin, string code, bool error, double seconds)
    {
        requests.WithLabels(Origin(origin), code).Inc();
        if (error) errors.WithLabels(Origin(origin), code).Inc();
        else requestSeconds.WithLabels(Origin(origin)).Observe(seconds);
    }

    public void LoraLoad(bool ok, double seconds)
    {
        loraLoads.WithLabels(ok ? "ok" : "refused").Inc();
        if (ok) loraLoadSeconds.Observe(seconds);
    }

    public void LoraEvicted() => loraEvictions.Inc();

    public void LoraCacheBytes(long bytes) => loraBytes.Set(bytes);

    static string Origin(string origin) => origin is "" ? "other" : origin;
}
