using InferenceServer.Models.Lora;
using InferenceServer.Models.Runtime;
using System.Diagnostics;
using System.Runtime.ExceptionServices;
using System.Security.Cryptography;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Flux2;
using InferenceServer.Pipeline.Images;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Generation;

/// <summary>A sampler step as researchers see it: which image, which step, the sigma, the latents after the step ([1, L_img, C] tokens, valid only inside the callback).</summary>
public sealed record GenerationStep(int Image, int Step, int Steps, float Timestep, Tensor Latents);

/// <summary>One output image.</summary>
public sealed record GeneratedImage(EncodedImage Image, long Seed, int Width, int Height);

/// <summary>The images and everything the caller should report: actual size, seeds, steps, per-stage timings.</summary>
public sealed record GenerationResult(IReadOnlyList<GeneratedImage> Images, int Width, int Height, long Seed, int Steps, double? Guidance,
    int References, bool PromptCacheHit, IReadOnlyList<StageTiming> Timings)
{
    /// <summary>Total time of one stage (all its images and steps).</summary>
    public double Milliseconds(Stage stage) => Timings.Where(t => t.Stage == stage).Sum(t => t.Milliseconds);
}

/// <summary>
/// Text + references -> images with a loaded model of any family (<see cref="IFamilyBackend"/>): the prompt is encoded by
/// the family's text encoder (cached by prompt, bounded by bytes); each reference is decoded, capped in pixels as BFL
/// <c>encode_image_refs</c> does (2024^2 for one reference, 1024^2 each for several; Lanczos, then centre-cropped to
/// multiples of the token size), VAE-encoded (cached by content hash and cap); then per image i, noise from a CPU float32
/// generator seeded with seed + i, <see cref="SamplingLoop"/>, VAE decode and image encode. The images of one request,
/// and of several requests with equal <see cref="BatchKey"/>s (<see cref="GenerateBatch"/>), share one DiT call per step;
/// the DiT's rows are independent of each other (bitwise on CPU for FLUX.2, see <see cref="InferenceServer.Models.Flux2.Flux2Math.RowWise"/>)
/// and images are decoded one at a time, so an image depends on its seed only, not on n or its neighbours.
/// Not thread-safe except <see cref="Prepare"/>: one thread owns it.
/// </summary>
public sealed class GenerationPipeline : IDisposable
{
    readonly PipelineOptions options;
    readonly TensorLruCache<string> prompts;
    readonly TensorLruCache<string> references;
    readonly ImageCodec codec;

    /// <summary>A pipeline over <paramref name="backend"/>, which it owns (disposed with the pipeline).</summary>
    public GenerationPipeline(IFamilyBackend backend, PipelineOptions? options = null)
    {
        Backend = backend;
        this.options = options ?? new PipelineOptions();
        prompts = new(this.options.PromptCacheBytes);
        references = new(this.options.ReferenceCacheBytes);
        codec = new(this.options.Decode);
    }

    /// <summary>A pipeline over a loaded FLUX.2 model; the caller keeps owning (and disposes) the model.</summary>
    public GenerationPipeline(Flux2Model model, PipelineOptions? options = null) : this(new Flux2Backend(model, ownsModel: false), options) { }

    public IFamilyBackend Backend { get; }
    public PipelineOptions Options => options;

    /// <summary>Bytes held by the prompt-embedding cache.</summary>
    public long PromptCacheBytes => prompts.Bytes;
    /// <summary>Bytes held by the reference-latent cache.</summary>
    public long ReferenceCacheBytes => references.Bytes;

    /// <summary>Runs a request: <see cref="Prepare"/>, then a batch of one. Bad input throws <see cref="RequestException"/> before any model work.</summary>
    /// <param name="onStep">Called for every image after every step (all images of the request advance together: step 0 of images 0..n-1, then step 1, ...).</param>
    public GenerationResult Generate(GenerationRequest request, Action<GenerationStep>? onStep = null, CancellationToken cancellationToken = default)
    {
        var prepared = Prepare(request);
        var outcome = Run([new BatchEntry(prepared, cancellationToken)], null, onStep is null ? null : (_, s) => onStep(s))[0];
        if (outcome.Error is not null) ExceptionDispatchInfo.Throw(outcome.Error);
        return outcome.Result!;
    }

    /// <summary>
    /// Validates a request against <see cref="Options"/> (the one place limits are checked), decodes its references and
    /// resolves size, steps, guidance and seed, with no tensor work (thread-safe): <see cref="Plan"/>, then
    /// <see cref="DecodeReferences"/>. Bad input throws <see cref="RequestException"/> naming the field.
    /// </summary>
    public PreparedRequest Prepare(GenerationRequest request)
    {
        var prepared = Plan(request);
        DecodeReferences(prepared);
        return prepared;
    }

    /// <summary>
    /// Everything <see cref="Prepare"/> does except decoding reference pixels: the references are checked and sized from
    /// their headers (format, dimensions, orientation), so a server can admit or refuse the request, and budget the
    /// memory its references will take (<see cref="PreparedRequest.ReferenceBytes"/>), before paying for a decode.
    /// Thread-safe. Damaged pixel data is found by <see cref="DecodeReferences"/>.
    /// </summary>
    public PreparedRequest Plan(GenerationRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var sampling = Backend.Sampling;
        var o = options;
        if (string.IsNullOrWhiteSpace(request.Prompt)) throw new RequestException("prompt", "prompt: must not be empty");
        if (request.Prompt.Length > o.MaxPromptChars) throw new RequestException("prompt", $"prompt: {request.Prompt.Length} characters, at most {o.MaxPromptChars} are allowed");
        if (request.References.Count > 0 && !Backend.AcceptsReferences)
            throw new RequestException("image", $"image: model {Backend.CardName} ({Backend.Family}) generates from text only and takes no reference images; {request.References.Count} given");
        if (request.References.Count > o.MaxReferences)
            throw new RequestException("image", $"image: {request.References.Count} reference images given, at most {o.MaxReferences} are allowed");
        for (int i = 0; i < request.References.Count; i++)
            if (request.References[i] is not { Length: > 0 }) throw new RequestException("image", $"image {i + 1}: empty");
        if (request.Count < 1 || request.Count > o.MaxImages) throw new RequestException("n", $"n: {request.Count} images requested, 1 to {o.MaxImages} are allowed");
        int steps = request.Steps ?? sampling.DefaultSteps;
        if (steps < 1 || steps > o.MaxSteps) throw new RequestException("steps", $"steps: {steps}, 1 to {o.MaxSteps} are allowed");
        if (request.Quality is < 0 or > 100) throw new RequestException("output_compression", $"output_compression: {request.Quality}, 0 to 100 are allowed");
        if (request.Guidance is { } gd && (double.IsNaN(gd) || gd < 0 || gd > o.MaxGuidance))
            throw new RequestException("guidance", $"guidance: {gd}, 0 to {o.MaxGuidance} are allowed");
        if (request.Loras.Count > o.MaxLorasPerRequest)
            throw new RequestException("loras", $"loras: {request.Loras.Count} adapters given, at most {o.MaxLorasPerRequest} are allowed");
        for (int i = 0; i < request.Loras.Count; i++)
        {
            var use = request.Loras[i];
            if (!double.IsFinite(use.Scale) || Math.Abs(use.Scale) > o.MaxLoraScale)
                throw new RequestException("loras", $"loras[{i}].scale: {use.Scale}, -{o.MaxLoraScale} to {o.MaxLoraScale} are allowed");
            if (use.Adapter.Model != Backend.Lora.Targets)
                throw new RequestException("loras", $"loras[{i}].name: adapter '{use.Adapter.Name}' was loaded for another model, not {Backend.CardName}");
            if (request.Loras.Take(i).Any(u => u.Adapter == use.Adapter))
                throw new RequestException("loras", $"loras[{i}].name: adapter '{use.Adapter.Name}' is named twice");
        }
        if (request.Seed is < 0 or > GenerationRequest.MaxSeed)
            throw new RequestException("seed", $"seed: {request.Seed}, use 0 to {GenerationRequest.MaxSeed} (or leave it unset, or -1, for a random seed)");
        double? guidance = Backend.UsesGuidance ? request.Guidance ?? sampling.Guidance : null;
        long seed = request.Seed ?? Random.Shared.NextInt64(0, GenerationRequest.MaxSeed);

        // Every reference's header first: an unreadable or oversized image fails before any decoding or model work.
        var headers = request.References.Select((b, k) =>
        {
            try { return codec.ReadHeader(b); }
            catch (ImageDecodeException e) { throw new RequestException("image", $"image {k + 1}: {e.Message}", e); }
        }).ToList();
        var sizes = o.Sizes with { Multiple = Backend.Geometry.PixelsPerToken };
        var (width, height) = request.Size.Resolve(sizes, headers.Count > 0 ? (headers[0].Width, headers[0].Height) : null);
        long cap = headers.Count == 1 ? o.SingleReferencePixels : o.MultiReferencePixels;
        int px = Backend.Geometry.PixelsPerToken;
        var capped = headers.Select(im => ImageCodec.CappedSize(im.Width, im.Height, cap)).ToList();
        var shapes = capped.Select((s, k) =>
        {
            try
            {
                var box = Pixels.CenterCropBox(s.Height, s.Width, px);
                return $"{box.Width / px}x{box.Height / px}";                      // the latent grid: its token shape
            }
            catch (ArgumentException e) { throw new RequestException("image", $"image {k + 1}: {e.Message}", e); }
        }).ToList();
        var key = new BatchKey(width, height, steps, guidance, string.Join(",", shapes));
        return new PreparedRequest(request, width, height, steps, guidance, seed, capped, cap, key);
    }

    /// <summary>
    /// Decodes a planned request's references straight to their capped size (<see cref="ImageCodec.Decode(byte[], long)"/>:
    /// an 8192x8192 PNG never sits in memory at full size), once; a no-op when already decoded. Thread-safe for distinct
    /// requests. Damaged pixel data throws <see cref="RequestException"/> naming the image.
    /// </summary>
    public void DecodeReferences(PreparedRequest prepared)
    {
        ArgumentNullException.ThrowIfNull(prepared);
        if (prepared.ReferencesDecoded) return;
        var sw = Stopwatch.StartNew();
        var images = prepared.Request.References.Select((b, k) =>
        {
            RgbImage image;
            try { image = codec.Decode(b, prepared.ReferenceCap); }
            catch (ImageDecodeException e) { throw new RequestException("image", $"image {k + 1}: {e.Message}", e); }
            if ((image.Width, image.Height) != prepared.ReferenceSizes[k])
                throw new RequestException("image", $"image {k + 1}: decoded to {image.Width}x{image.Height}, its header said {prepared.ReferenceSizes[k].Width}x{prepared.ReferenceSizes[k].Height} after the pixel cap");
            return image;
        }).ToList();
        prepared.SetReferences(images, sw.Elapsed.TotalMilliseconds);
    }

    /// <summary>
    /// Runs prepared requests with equal <see cref="PreparedRequest.Key"/> as one batch: one DiT call per step for every
    /// image of every live entry (row j of an entry uses seed <c>Seed + j</c> and its own noise generator). Each entry's
    /// token is checked before every step: a cancelled entry's rows leave the batch and its outcome is an
    /// <see cref="OperationCanceledException"/> while the others go on. An exception during conditioning or sampling fails
    /// every entry still running with that exception; one during an entry's decode fails that entry. Images are decoded one at
    /// a time, so an image does not depend on its neighbours (bitwise on CPU; see docs/pipeline-api.md).
    /// </summary>
    /// <param name="onStep">Called on the pipeline's thread for every live entry after every step.</param>
    /// <returns>One outcome per entry, in order.</returns>
    public IReadOnlyList<BatchOutcome> GenerateBatch(IReadOnlyList<BatchEntry> entries, Action<BatchProgress>? onStep = null) => Run(entries, onStep, null);

    IReadOnlyList<BatchOutcome> Run(IReadOnlyList<BatchEntry> entries, Action<BatchProgress>? onProgress, Action<int, GenerationStep>? onImageStep)
    {
        ArgumentNullException.ThrowIfNull(entries);
        if (entries.Count == 0) return [];
        var key = entries[0].Request.Key;
        for (int e = 1; e < entries.Count; e++)
            if (entries[e].Request.Key != key)
                throw new ArgumentException($"entries: entry {e} has batch key {entries[e].Request.Key}, entry 0 has {key}; only requests with equal keys can share a batch");

        var device = Backend.Device;
        int n = entries.Count;
        var outcomes = new BatchOutcome?[n];
        // References of planned requests nobody decoded yet (servers decode before queueing): a damaged one fails its entry only.
        for (int e = 0; e < n; e++)
        {
            try { DecodeReferences(entries[e].Request); }
            catch (RequestException ex) { outcomes[e] = new BatchOutcome(null, ex); }
        }
        var timings = entries.Select(e => new List<StageTiming> { new(Stage.ReferenceDecode, e.Request.DecodeMilliseconds) }).ToArray();
        var hits = new bool[n];
        bool Cancelled(int e)
        {
            if (outcomes[e] is null && entries[e].CancellationToken.IsCancellationRequested)
                outcomes[e] = new BatchOutcome(null, new OperationCanceledException(entries[e].CancellationToken));
            return outcomes[e] is not null;
        }

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        int px = Backend.Geometry.PixelsPerToken;
        long h = key.Height / px, w = key.Width / px;
        Tensor? x = null;
        var rowEntry = new List<int>();
        var rowImage = new List<int>();
        try
        {
            // Conditioning, per entry: each distinct prompt encoded once (and cached), references through their cache.
            var sw = Stopwatch.StartNew();
            var txt = new Tensor?[n];
            var refs = new IReadOnlyList<Tensor>?[n];
            for (int e = 0; e < n; e++)
            {
                if (Cancelled(e)) continue;
                var req = entries[e].Request;
                sw.Restart();
                (txt[e], hits[e]) = CachedPrompt(req.Request.Prompt, req.Request.TextTokens);
                ComputeDevice.SyncForTiming(device);
                timings[e].Add(new StageTiming(Stage.TextEncode, sw.Elapsed.TotalMilliseconds));
                sw.Restart();
                try
                {
                    // Between encoder blocks the entry's own token is checked: a cancelled entry leaves, the others go on.
                    using var cancellation = ComputeCancellation.Use(entries[e].CancellationToken);
                    refs[e] = req.Request.References.Select((bytes, k) => ReferenceLatent(bytes, req.References![k], req.ReferenceCap)).ToList();
                }
                catch (OperationCanceledException) when (Cancelled(e)) { continue; }
                timings[e].Add(new StageTiming(Stage.ReferenceEncode, sw.Elapsed.TotalMilliseconds));
            }

            // Rows: entry e's images j = 0..Count-1, in entry order.
            var noise = new List<Tensor>();
            var conditioning = new List<RowConditioning>();
            var rowLoras = new List<IReadOnlyList<LoraUse>>();
            for (int e = 0; e < n; e++)
            {
                if (outcomes[e] is not null) continue;
                for (int j = 0; j < entries[e].Request.Count; j++)
                {
                    rowEntry.Add(e);
                    rowImage.Add(j);
                    noise.Add(Backend.Noise(entries[e].Request.Seed + j, h, w));                // [1, h*w, C]
                    conditioning.Add(new RowConditioning(txt[e]!, refs[e]!));
                    rowLoras.Add(entries[e].Request.Request.Loras);
                }
            }
            if (rowEntry.Count > 0)
            {
                var schedule = Backend.Schedule(key.Steps, h * w);
                int? textTokens = entries[rowEntry[0]].Request.Request.TextTokens; // rows are concatenated: one text length per batch
                var conditioned = Backend.Condition(conditioning, key.Guidance, h, w, p => CachedPrompt(p, textTokens).Features);
                using var denoiser = rowLoras.Any(r => r.Count > 0) ? new AdaptedDenoiser(conditioned, Backend.Lora, rowLoras) : conditioned;
                using (var x0 = cat(noise, 0)) x = ComputeDevice.Upload(x0, device, ScalarType.Float32); // [R, h*w, C] f32
                foreach (var t in noise) t.Dispose();
                var stepWatch = Stopwatch.StartNew();
                int[]? KeepRows(int step)
                {
                    stepWatch.Restart();
                    // Cancelled entries leave the batch before the step.
                    var keep = Enumerable.Range(0, rowEntry.Count).Where(r => !Cancelled(rowEntry[r])).ToArray();
                    if (keep.Length == rowEntry.Count) return null;
                    rowEntry = keep.Select(r => rowEntry[r]).ToList();
                    rowImage = keep.Select(r => rowImage[r]).ToList();
                    return keep;
                }
                void OnStep(DenoiseStep s)
                {
                    double stepMs = stepWatch.Elapsed.TotalMilliseconds;
                    foreach (var e in rowEntry.Distinct())
                    {
                        int first = rowEntry.IndexOf(e), count = rowEntry.Count(r => r == e);
                        timings[e].Add(new StageTiming(Stage.Denoise, stepMs, s.Index, rowImage.GetRange(first, count)));
                        EncodedImage? preview = null;
                        int every = entries[e].PreviewEvery;
                        if (every > 0 && (s.Index + 1) % every == 0)
                        {
                            var pw = Stopwatch.StartNew();
                            using (var x0 = s.Before[first..(first + 1)] - s.TCurr * s.Velocity[first..(first + 1)]) preview = Preview(x0, h, w);
                            timings[e].Add(new StageTiming(Stage.Preview, pw.Elapsed.TotalMilliseconds, s.Index));
                        }
                        if (onImageStep is not null)
                            for (int r = first; r < first + count; r++)
                                onImageStep(e, new GenerationStep(rowImage[r], s.Index, s.Count, s.TCurr, s.Latents[r..(r + 1)]));
                        onProgress?.Invoke(new BatchProgress(e, s.Index, s.Count, preview));
                    }
                }
                // Inside a step the DiT stops between blocks only when every request of the batch is cancelled: a live
                // request's rows must finish the step (a cancelled one's rows leave between steps, in KeepRows).
                using var allCancelled = new CancellationTokenSource();
                var live = Enumerable.Range(0, n).Where(e => outcomes[e] is null).ToList();
                var watches = live.Select(e => entries[e].CancellationToken.Register(() =>
                {
                    if (live.All(k => entries[k].CancellationToken.IsCancellationRequested)) allCancelled.Cancel();
                })).ToList();
                Tensor final;
                try
                {
                    using var cancellation = ComputeCancellation.Use(allCancelled.Token);
                    final = SamplingLoop.Run(denoiser, x, schedule, KeepRows, OnStep);
                }
                finally { foreach (var watch in watches) watch.Dispose(); }
                x.Dispose();
                x = final;
            }

            // Decode and encode, one image at a time (a batched VAE decode could differ by batch).
            for (int e = 0; e < n; e++)
            {
                if (Cancelled(e)) continue;
                try
                {
                    var req = entries[e].Request;
                    int first = rowEntry.IndexOf(e);
                    var outputs = new List<GeneratedImage>();
                    // The entry's deadline or cancel is honoured between images and between VAE blocks/tiles, not only between steps.
                    using var cancellation = ComputeCancellation.Use(entries[e].CancellationToken);
                    for (int j = 0; j < req.Count; j++)
                    {
                        entries[e].CancellationToken.ThrowIfCancellationRequested();
                        sw.Restart();
                        using var imageScope = NewDisposeScope();
                        var decoded = Backend.Decode(x![(first + j)..(first + j + 1)], h, w);   // [1, 3, H, W]
                        ComputeDevice.SyncForTiming(device);
                        timings[e].Add(new StageTiming(Stage.Decode, sw.Elapsed.TotalMilliseconds, Images: [j]));
                        sw.Restart();
                        var encoded = ImageCodec.Encode(ImageTensors.ToRgbImage(decoded, Backend.Rounding), req.Request.Format, req.Request.Quality);
                        timings[e].Add(new StageTiming(Stage.ImageEncode, sw.Elapsed.TotalMilliseconds, Images: [j]));
                        outputs.Add(new GeneratedImage(encoded, req.Seed + j, key.Width, key.Height));
                    }
                    outcomes[e] = new BatchOutcome(new GenerationResult(outputs, key.Width, key.Height, req.Seed, key.Steps, key.Guidance,
                        req.Request.References.Count, hits[e], timings[e]), null);
                }
                catch (Exception ex) { outcomes[e] = new BatchOutcome(null, ex); }
            }
        }
        catch (Exception ex)
        {
            for (int e = 0; e < n; e++) outcomes[e] ??= new BatchOutcome(null, ex);
        }
        finally { x?.Dispose(); }
        return outcomes.Select(o => o!).ToList();
    }

    /// <summary>
    /// The prompt's features from the cache, encoded (and cached) on a miss; the tensor belongs to the caller's scope.
    /// A shortened text (<paramref name="maxTokens"/>, the warm-up's) is encoded each time and never cached.
    /// </summary>
    (Tensor Features, bool Hit) CachedPrompt(string prompt, int? maxTokens = null)
    {
        if (maxTokens is not null) return (Backend.EncodePrompt(prompt, maxTokens), false);
        if (prompts.TryGet(prompt, out var t)) return (t, true);
        t = Backend.EncodePrompt(prompt);
        prompts.Add(prompt, t);
        return (t, false);
    }

    /// <summary>A small JPEG (longest side at most 256) of x0 tokens [1, h*w, C].</summary>
    EncodedImage Preview(Tensor x0, long h, long w)
    {
        using var scope = NewDisposeScope();
        var image = ImageTensors.ToRgbImage(Backend.Decode(x0, h, w), Backend.Rounding);
        double scale = Math.Min(1.0, 256.0 / Math.Max(image.Width, image.Height));
        if (scale < 1) image = ImageCodec.Resize(image, Math.Max(1, (int)Math.Round(image.Width * scale)), Math.Max(1, (int)Math.Round(image.Height * scale)));
        return ImageCodec.Encode(image, ImageFormat.Jpeg, 80);
    }

    /// <summary>
    /// Reads a LoRA file for this pipeline's model (any published naming; see <see cref="LoraAdapter.Load"/>), in the model's
    /// dtype and device. Thread-safe: servers load adapters off the engine thread. Bad files throw <see cref="InvalidDataException"/>.
    /// </summary>
    public LoraAdapter LoadAdapter(string path, string? name = null) => LoraAdapter.Load(path, Backend.Lora.Targets, Backend.DType, Backend.Device, name);

    /// <summary>Text tokens of the warm-up: the whole chat template of its prompt, far fewer than the 512 a klein prompt pads to.</summary>
    public const int WarmUpTextTokens = 32;

    /// <summary>
    /// One small generation (64x64, one step, a <see cref="WarmUpTextTokens"/>-token text) through every component on the
    /// model's device, the same code requests run, then a device synchronise: every weight is used once and the model is
    /// known to run; on CUDA it creates the cuBLAS/cuDNN handles, loads kernels and primes the caching allocator, so the
    /// first request does not pay for them. The short text keeps it to seconds on a CPU (klein-4B: 15 s with the full
    /// 512 tokens). Returns its wall time in milliseconds.
    /// </summary>
    public double WarmUp()
    {
        var sw = Stopwatch.StartNew();
        var p = Prepare(new GenerationRequest { Prompt = "warm-up", Size = new SizeRequest("64x64"), Steps = 1, Seed = 0, TextTokens = WarmUpTextTokens });
        var r = GenerateBatch([new BatchEntry(p, CancellationToken.None)]);
        if (r[0].Error is { } e) throw new InvalidOperationException($"warm-up of {Backend.CardName} failed: {e.Message}", e);
        ComputeDevice.Synchronize(Backend.Device);
        return sw.Elapsed.TotalMilliseconds;
    }

    /// <summary>The prompt's text features as the backend gives them (caller owns).</summary>
    public Tensor EncodePrompt(string prompt) => Backend.EncodePrompt(prompt);

    /// <summary>Centre-cropped, VAE-encoded latent of one reference (decoded at its capped size), from the cache when seen before.</summary>
    Tensor ReferenceLatent(byte[] bytes, RgbImage image, long cap)
    {
        string key = Convert.ToHexString(SHA256.HashData(bytes)) + "/" + cap;
        if (references.TryGet(key, out var cached)) return cached;
        var box = Pixels.CenterCropBox(image.Height, image.Width, Backend.Geometry.PixelsPerToken);
        image = ImageCodec.CenterCrop(image, box.Width, box.Height);
        using var scope = NewDisposeScope();
        var x = ImageTensors.ToTensor(image).unsqueeze(0);                       // [1, 3, H, W]
        var latent = Backend.EncodeReference(x).MoveToOuterDisposeScope();
        references.Add(key, latent);
        return latent;
    }

    public void Dispose()
    {
        prompts.Dispose();
        references.Dispose();
        Backend.Dispose();
    }
}
