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

/// <summary>One generation: text-to-image when <see cref="References"/> is empty, an edit otherwise (same code path).</summary>
public sealed record GenerationRequest
{
    public required string Prompt { get; init; }
    /// <summary>Encoded reference images (PNG, JPEG, WebP), at most <see cref="PipelineOptions.MaxReferences"/>.</summary>
    public IReadOnlyList<byte[]> References { get; init; } = [];
    public SizeRequest Size { get; init; } = new();
    /// <summary>Number of images; image i uses seed <c>Seed + i</c>.</summary>
    public int Count { get; init; } = 1;
    /// <summary>Null: one is picked and reported.</summary>
    public long? Seed { get; init; }
    /// <summary>Null: the model card's default.</summary>
    public int? Steps { get; init; }
    /// <summary>Null: the card's guidance. Used only by models that embed guidance, or by non-distilled (CFG) models.</summary>
    public double? Guidance { get; init; }
    public ImageFormat Format { get; init; } = ImageFormat.Png;
    public int? Quality { get; init; }
}

/// <summary>Knobs of the pipeline (not of one request).</summary>
public sealed record PipelineOptions
{
    public int MaxReferences { get; init; } = 10;
    public SizeLimits Sizes { get; init; } = new();
    /// <summary>Byte bound of the prompt-embedding cache (0 disables it).</summary>
    public long PromptCacheBytes { get; init; } = 256L << 20;
    /// <summary>Byte bound of the reference-latent cache (0 disables it).</summary>
    public long ReferenceCacheBytes { get; init; } = 256L << 20;
    /// <summary>Pixel cap of a single reference (BFL encode_image_refs: 2024^2).</summary>
    public long SingleReferencePixels { get; init; } = 2024L * 2024;
    /// <summary>Pixel cap of each of several references (BFL encode_image_refs: 1024^2).</summary>
    public long MultiReferencePixels { get; init; } = 1024L * 1024;
    public ImageLimits Decode { get; init; } = new();
}

/// <summary>A sampler step as researchers see it: which image, which step, the timestep, the latents after the step ([1, L_img, 128], valid only inside the callback).</summary>
public sealed record GenerationStep(int Image, int Step, int Steps, float Timestep, Tensor Latents);

/// <summary>One output image.</summary>
public sealed record GeneratedImage(EncodedImage Image, long Seed, int Width, int Height);

/// <summary>Wall time of one stage (ms).</summary>
public sealed record StageTiming(string Stage, double Milliseconds);

/// <summary>The images and everything the caller should report: actual size, seeds, steps, per-stage timings.</summary>
public sealed record GenerationResult(IReadOnlyList<GeneratedImage> Images, int Width, int Height, long Seed, int Steps, double? Guidance,
    int References, bool PromptCacheHit, IReadOnlyList<StageTiming> Timings)
{
    /// <summary>Sum of the timings whose stage name starts with <paramref name="prefix"/>.</summary>
    public double Milliseconds(string prefix) => Timings.Where(t => t.Stage.StartsWith(prefix, StringComparison.Ordinal)).Sum(t => t.Milliseconds);
}

/// <summary>
/// Text + references -> images with a loaded <see cref="Flux2Model"/>: the prompt is tokenized and encoded by Qwen3
/// (cached by prompt, bounded by bytes); each reference is decoded, capped in pixels as BFL <c>encode_image_refs</c>
/// does (2024^2 for one reference, 1024^2 each for several; Lanczos, then centre-cropped to multiples of 16),
/// VAE-encoded (cached by content hash and cap) and packed with t offsets 10, 20, ...; then per image i, noise from a
/// CPU float32 generator seeded with seed + i, the Euler flow loop, VAE decode and image encode. The images of one request,
/// and of several requests with equal <see cref="BatchKey"/>s (<see cref="GenerateBatch"/>), share one DiT call per step;
/// the DiT's rows are independent of each other (bitwise on CPU, see <see cref="InferenceServer.Models.Flux2.Flux2Math.RowWise"/>)
/// and images are decoded one at a time, so an image depends on its seed only, not on n or its neighbours.
/// Not thread-safe except <see cref="Prepare"/>: one thread owns it.
/// </summary>
public sealed class GenerationPipeline(Flux2Model model, PipelineOptions? options = null) : IDisposable
{
    readonly PipelineOptions options = options ?? new PipelineOptions();
    readonly TensorLruCache<string> prompts = new((options ?? new PipelineOptions()).PromptCacheBytes);
    readonly TensorLruCache<string> references = new((options ?? new PipelineOptions()).ReferenceCacheBytes);
    readonly ImageCodec codec = new((options ?? new PipelineOptions()).Decode);

    public Flux2Model Model { get; } = model;
    public PipelineOptions Options => options;

    /// <summary>Bytes held by the prompt-embedding cache.</summary>
    public long PromptCacheBytes => prompts.Bytes;
    /// <summary>Bytes held by the reference-latent cache.</summary>
    public long ReferenceCacheBytes => references.Bytes;

    /// <summary>Runs a request: <see cref="Prepare"/>, then a batch of one. Bad input throws <see cref="ArgumentException"/> (or <see cref="ImageDecodeException"/>) before any model work.</summary>
    /// <param name="onStep">Called for every image after every step (all images of the request advance together: step 0 of images 0..n-1, then step 1, ...).</param>
    public GenerationResult Generate(GenerationRequest request, Action<GenerationStep>? onStep = null, CancellationToken cancellationToken = default)
    {
        var prepared = Prepare(request);
        var outcome = Run([new BatchEntry(prepared, cancellationToken)], null, onStep is null ? null : (_, s) => onStep(s))[0];
        if (outcome.Error is not null) ExceptionDispatchInfo.Throw(outcome.Error);
        return outcome.Result!;
    }

    /// <summary>
    /// Validates a request, decodes its references and resolves size, steps, guidance and seed, with no tensor work (thread-safe).
    /// Bad input throws <see cref="ArgumentException"/> ("field: message").
    /// </summary>
    public PreparedRequest Prepare(GenerationRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var card = Model.Card;
        if (string.IsNullOrWhiteSpace(request.Prompt)) throw new ArgumentException("prompt: must not be empty");
        if (request.References.Count > options.MaxReferences)
            throw new ArgumentException($"image: {request.References.Count} reference images given, at most {options.MaxReferences} are allowed");
        if (request.Count is < 1 or > 16) throw new ArgumentException($"n: {request.Count} images requested, 1 to 16 are allowed");
        int steps = request.Steps ?? card.Sampling.DefaultSteps;
        if (steps is < 1 or > 200) throw new ArgumentException($"steps: {steps}, 1 to 200 are allowed");
        if (request.Quality is < 0 or > 100) throw new ArgumentException($"quality: {request.Quality}, 0 to 100 are allowed");
        bool usesGuidance = card.Transformer.UseGuidanceEmbed || !card.Sampling.Distilled;
        double? guidance = usesGuidance ? request.Guidance ?? card.Sampling.Guidance : null;
        long seed = request.Seed ?? Random.Shared.NextInt64(0, 1L << 53);

        var sw = Stopwatch.StartNew();
        // Decode every reference first: an unreadable image fails before any model work.
        var images = request.References.Select((b, k) =>
        {
            try { return codec.Decode(b); }
            catch (ImageDecodeException e) { throw new ArgumentException($"image {k + 1}: {e.Message}", e); }
        }).ToList();
        var (width, height) = request.Size.Resolve(options.Sizes, images.Count > 0 ? (images[0].Width, images[0].Height) : null);
        long cap = images.Count == 1 ? options.SingleReferencePixels : options.MultiReferencePixels;
        var shapes = images.Select((im, k) =>
        {
            var (w, h) = CappedSize(im.Width, im.Height, cap);
            try
            {
                var box = Pixels.CenterCropBox(h, w, 16);
                return $"{box.Width / 16}x{box.Height / 16}";                      // the latent grid: its token shape
            }
            catch (ArgumentException e) { throw new ArgumentException($"image {k + 1}: {e.Message}", e); }
        }).ToList();
        var key = new BatchKey(width, height, steps, guidance, string.Join(",", shapes));
        return new PreparedRequest(request, width, height, steps, guidance, seed, images, cap, key, sw.Elapsed.TotalMilliseconds);
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

        var card = Model.Card;
        bool cfg = !card.Sampling.Distilled;
        var device = Model.Transformer.Device;
        var dtype = Model.Transformer.DType;
        int n = entries.Count;
        var outcomes = new BatchOutcome?[n];
        var timings = entries.Select(e => new List<StageTiming> { new("reference_decode", e.Request.DecodeMilliseconds) }).ToArray();
        var hits = new bool[n];
        bool Cancelled(int e)
        {
            if (outcomes[e] is null && entries[e].CancellationToken.IsCancellationRequested)
                outcomes[e] = new BatchOutcome(null, new OperationCanceledException(entries[e].CancellationToken));
            return outcomes[e] is not null;
        }

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        long h = key.Height / 16, w = key.Width / 16;
        Tensor x = null!;
        try
        {
            // Conditioning, per entry: each distinct prompt encoded once (and cached), references through their cache.
            var sw = Stopwatch.StartNew();
            var batchPrompts = new Dictionary<string, Tensor>();
            var txt = new Tensor?[n];
            var refs = new (Tensor Tokens, Tensor Ids)?[n];
            for (int e = 0; e < n; e++)
            {
                if (Cancelled(e)) continue;
                var req = entries[e].Request;
                sw.Restart();
                string prompt = req.Request.Prompt;
                hits[e] = batchPrompts.TryGetValue(prompt, out var t) || prompts.TryGet(prompt, out t);
                if (t is null) { t = EncodePrompt(prompt); prompts.Add(prompt, t); }
                batchPrompts[prompt] = t;
                txt[e] = t;
                ComputeDevice.SyncForTiming(device);
                timings[e].Add(new StageTiming("text_encode", sw.Elapsed.TotalMilliseconds));
                sw.Restart();
                if (req.References.Count > 0)
                {
                    var latents = req.Request.References.Select((bytes, k) => ReferenceLatent(bytes, req.References[k], req.ReferenceCap)).ToList();
                    var (tokens, ids) = Flux2Packing.ReferenceTokens(latents);
                    refs[e] = (tokens.to(dtype), ids);
                }
                timings[e].Add(new StageTiming("reference_encode", sw.Elapsed.TotalMilliseconds));
            }
            Tensor? uncond = null;
            if (cfg && !prompts.TryGet("", out uncond)) { uncond = EncodePrompt(""); prompts.Add("", uncond); }

            // Rows: entry e's images j = 0..Count-1, in entry order.
            var rowEntry = new List<int>();
            var rowImage = new List<int>();
            var noise = new List<Tensor>();
            for (int e = 0; e < n; e++)
            {
                if (outcomes[e] is not null) continue;
                for (int j = 0; j < entries[e].Request.Count; j++)
                {
                    rowEntry.Add(e);
                    rowImage.Add(j);
                    noise.Add(Noise(entries[e].Request.Seed + j, h, w));                        // [1, h*w, 128]
                }
            }
            var imgIds = LatentIdsFor(h, w).to(device);                                          // [1, h*w, 4]
            var schedule = FlowSchedule.GetSchedule(key.Steps, (int)(h * w));
            if (rowEntry.Count > 0)
            {
                x = cat(noise, 0).to(device);                                                    // [R, h*w, 128] f32
                var ctx = cat(rowEntry.Select(e => txt[e]!).ToList(), 0).to(dtype);              // [R, Lt, D]
                var refTokens = key.References.Length > 0 ? cat(rowEntry.Select(e => refs[e]!.Value.Tokens).ToList(), 0) : null; // [R, L_ref, 128]
                var refIds = key.References.Length > 0 ? cat(rowEntry.Select(e => refs[e]!.Value.Ids).ToList(), 0) : null;       // [R, L_ref, 4]
                var uncondRow = uncond?.to(dtype);                                               // [1, Lt, D]
                foreach (var t in noise) t.Dispose();
                (Tensor Ctx, Tensor Ids) ModelText()                                             // [R or 2R ([uncond; cond]), Lt, D], ids
                {
                    using var s = NewDisposeScope();
                    var (c, ids) = Flux2Packing.BatchedPrcTxt(cfg ? cat([uncondRow!.expand(ctx.shape[0], -1, -1), ctx], 0) : ctx);
                    return (c.MoveToOuterDisposeScope(), ids.MoveToOuterDisposeScope());
                }
                var (ctxIn, ctxIds) = ModelText();

                var stepWatch = new Stopwatch();
                for (int i = 0; i < key.Steps; i++)
                {
                    // Cancelled entries leave the batch before the step.
                    var keep = Enumerable.Range(0, rowEntry.Count).Where(r => !Cancelled(rowEntry[r])).ToArray();
                    if (keep.Length == 0) break;
                    if (keep.Length < rowEntry.Count)
                    {
                        using var idx = tensor(keep.Select(r => (long)r).ToArray(), device: device);
                        Tensor Keep(Tensor t) { var k = t.index_select(0, idx); t.Dispose(); return k; }
                        x = Keep(x);
                        ctx = Keep(ctx);
                        if (refTokens is not null) { refTokens = Keep(refTokens); refIds = Keep(refIds!); }
                        ctxIn.Dispose(); ctxIds.Dispose();
                        (ctxIn, ctxIds) = ModelText();
                        rowEntry = keep.Select(r => rowEntry[r]).ToList();
                        rowImage = keep.Select(r => rowImage[r]).ToList();
                    }
                    int rows = rowEntry.Count;
                    float tCurr = schedule[i], tPrev = schedule[i + 1];
                    using var stepScope = NewDisposeScope();
                    stepWatch.Restart();
                    var v = FlowSampler.Velocity(Model.Transformer, cfg, x, imgIds.expand(rows, -1, -1), ctxIn, ctxIds, tCurr,
                        (float)(key.Guidance ?? 1.0), refTokens, refIds);                       // [R, h*w, 128] f32
                    var next = FlowSampler.EulerStep(x, v, tCurr, tPrev);                       // [R, h*w, 128] f32
                    ComputeDevice.SyncForTiming(device);                                        // benchmarks only (no host sync otherwise)
                    double stepMs = stepWatch.Elapsed.TotalMilliseconds;
                    foreach (var e in rowEntry.Distinct())
                    {
                        int first = rowEntry.IndexOf(e), count = rowEntry.Count(r => r == e);
                        string images = string.Join(",", rowImage.GetRange(first, count));
                        timings[e].Add(new StageTiming($"denoise[{images}].step{i}", stepMs));
                        EncodedImage? preview = null;
                        int every = entries[e].PreviewEvery;
                        if (every > 0 && (i + 1) % every == 0)
                        {
                            var pw = Stopwatch.StartNew();
                            preview = Preview(x[first..(first + 1)] - tCurr * v[first..(first + 1)], imgIds);
                            timings[e].Add(new StageTiming($"preview.step{i}", pw.Elapsed.TotalMilliseconds));
                        }
                        if (onImageStep is not null)
                            for (int r = first; r < first + count; r++)
                                onImageStep(e, new GenerationStep(rowImage[r], i, key.Steps, tCurr, next[r..(r + 1)]));
                        onProgress?.Invoke(new BatchProgress(e, i, key.Steps, preview));
                    }
                    next.MoveToOuterDisposeScope();
                    x.Dispose();
                    x = next;
                }
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
                    for (int j = 0; j < req.Count; j++)
                    {
                        sw.Restart();
                        using var imageScope = NewDisposeScope();
                        var grid = Flux2Packing.Unpack(x[(first + j)..(first + j + 1)], imgIds);  // [1, 128, h, w]
                        var decoded = Model.Vae.Decode(grid);                                    // [1, 3, H, W]
                        ComputeDevice.SyncForTiming(device);
                        timings[e].Add(new StageTiming($"decode[{j}]", sw.Elapsed.TotalMilliseconds));
                        sw.Restart();
                        var encoded = ImageCodec.Encode(decoded, req.Request.Format, req.Request.Quality);
                        timings[e].Add(new StageTiming($"image_encode[{j}]", sw.Elapsed.TotalMilliseconds));
                        outputs.Add(new GeneratedImage(encoded, req.Seed + j, key.Width, key.Height));
                    }
                    outcomes[e] = new BatchOutcome(new GenerationResult(outputs, key.Width, key.Height, req.Seed, key.Steps, key.Guidance,
                        req.References.Count, hits[e], timings[e]), null);
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

    /// <summary>A small JPEG (longest side at most 256) of x0 tokens [1, h*w, 128].</summary>
    EncodedImage Preview(Tensor x0, Tensor imgIds)
    {
        using var scope = NewDisposeScope();
        var image = ImageTensors.ToRgbImage(Model.Vae.Decode(Flux2Packing.Unpack(x0, imgIds)));
        double scale = Math.Min(1.0, 256.0 / Math.Max(image.Width, image.Height));
        if (scale < 1) image = ImageCodec.Resize(image, Math.Max(1, (int)Math.Round(image.Width * scale)), Math.Max(1, (int)Math.Round(image.Height * scale)));
        return ImageCodec.Encode(image, ImageFormat.Jpeg, 80);
    }

    /// <summary>
    /// The sampling core <see cref="Generate"/> runs for each image, open to researchers and parity tests: distilled models take
    /// one call per step (guidance embedded when the model has it), others classifier-free guidance over
    /// <paramref name="ctx"/> = [uncond; cond]. Returns [1, L_img, 128] float32 tokens (caller owns).
    /// </summary>
    public static Tensor Sample(Flux2Transformer transformer, bool distilled, Tensor noise, Tensor imgIds, Tensor ctx, Tensor ctxIds,
        IReadOnlyList<float> schedule, double? guidance, Tensor? refTokens, Tensor? refIds, Action<DenoiseStep>? onStep = null, CancellationToken cancellationToken = default) =>
        distilled
            ? FlowSampler.Denoise(transformer, noise, imgIds, ctx, ctxIds, schedule, (float)(guidance ?? 1.0), refTokens, refIds, onStep, cancellationToken)
            : FlowSampler.DenoiseCfg(transformer, noise, imgIds, ctx, ctxIds, schedule, (float)(guidance ?? 1.0), refTokens, refIds, onStep, cancellationToken);

    /// <summary>The prompt's stacked Qwen3 hidden states, [1, L, context dim] in the encoder's dtype (caller owns).</summary>
    public Tensor EncodePrompt(string prompt)
    {
        var tp = Model.Tokenizer.EncodePrompt(prompt, Model.TextEncoder.Config.MaxLength);
        return Model.TextEncoder.Encode([tp]);
    }

    /// <summary>BFL get_noise for one image: randn [1, 128, h, w] float32 on the CPU from its own generator, as tokens [1, h*w, 128].</summary>
    public static Tensor Noise(long seed, long h, long w)
    {
        using var scope = NewDisposeScope();
        using var gen = new Generator((ulong)seed);
        var n = randn([1, 128, h, w], ScalarType.Float32, generator: gen);
        return Flux2Packing.BatchedPrcImg(n).Tokens.MoveToOuterDisposeScope();
    }

    static Tensor LatentIdsFor(long h, long w)
    {
        using var scope = NewDisposeScope();
        return Flux2Packing.BatchedPrcImg(zeros(1, 1, h, w)).Ids.MoveToOuterDisposeScope();
    }

    /// <summary>Capped, centre-cropped, VAE-encoded latent [128, h, w] of one reference, from the cache when seen before.</summary>
    Tensor ReferenceLatent(byte[] bytes, RgbImage image, long cap)
    {
        string key = Convert.ToHexString(SHA256.HashData(bytes)) + "/" + cap;
        if (references.TryGet(key, out var cached)) return cached;
        image = CapPixels(image, cap);
        var box = Pixels.CenterCropBox(image.Height, image.Width, 16);
        image = ImageCodec.CenterCrop(image, box.Width, box.Height);
        using var scope = NewDisposeScope();
        var x = ImageTensors.ToTensor(image).unsqueeze(0);                       // [1, 3, H, W]
        var latent = Model.Vae.Encode(x)[0].MoveToOuterDisposeScope();           // [128, H/16, W/16]
        references.Add(key, latent);
        return latent;
    }

    /// <summary>BFL cap_pixels: above <paramref name="cap"/> pixels, scale both sides by sqrt(cap / pixels), truncated.</summary>
    public static RgbImage CapPixels(RgbImage image, long cap)
    {
        var (w, h) = CappedSize(image.Width, image.Height, cap);
        return (w, h) == (image.Width, image.Height) ? image : ImageCodec.Resize(image, w, h);
    }

    /// <summary>The size <see cref="CapPixels"/> gives a <paramref name="width"/> x <paramref name="height"/> image.</summary>
    public static (int Width, int Height) CappedSize(int width, int height, long cap)
    {
        long pixels = (long)width * height;
        if (pixels <= cap) return (width, height);
        double scale = Math.Sqrt((double)cap / pixels);
        return (Math.Max(1, (int)(width * scale)), Math.Max(1, (int)(height * scale)));
    }

    public void Dispose()
    {
        prompts.Dispose();
        references.Dispose();
    }
}

/// <summary>
/// An LRU map of tensors bounded by their total bytes. It keeps its own handle of each value; <see cref="TryGet"/> hands out
/// a new handle (an alias of the same storage, owned by the caller's dispose scope), so eviction never frees a tensor in use.
/// </summary>
public sealed class TensorLruCache<TKey>(long maxBytes) : IDisposable where TKey : notnull
{
    readonly LinkedList<(TKey Key, Tensor Value, long Bytes)> order = new();
    readonly Dictionary<TKey, LinkedListNode<(TKey Key, Tensor Value, long Bytes)>> map = new();

    public long Bytes { get; private set; }
    public int Count => map.Count;
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    /// <summary>An alias of the cached tensor, owned by the caller.</summary>
    public bool TryGet(TKey key, out Tensor value)
    {
        if (map.TryGetValue(key, out var node))
        {
            order.Remove(node);
            order.AddFirst(node);
            value = node.Value.Value.alias();
            Hits++;
            return true;
        }
        Misses++;
        value = null!;
        return false;
    }

    /// <summary>Stores a handle of <paramref name="value"/> (the caller keeps its own), evicting the least recently used.</summary>
    public void Add(TKey key, Tensor value)
    {
        long bytes = value.numel() * value.ElementSize;
        if (bytes > maxBytes || map.ContainsKey(key)) return;
        value = value.alias().DetachFromDisposeScope();
        while (Bytes + bytes > maxBytes && order.Last is { } last)
        {
            order.RemoveLast();
            map.Remove(last.Value.Key);
            Bytes -= last.Value.Bytes;
            last.Value.Value.Dispose();
        }
        map[key] = order.AddFirst((key, value, bytes));
        Bytes += bytes;
    }

    public void Dispose()
    {
        foreach (var e in order) e.Value.Dispose();
        order.Clear();
        map.Clear();
        Bytes = 0;
    }
}
