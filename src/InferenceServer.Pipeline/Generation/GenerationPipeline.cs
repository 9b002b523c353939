using System.Diagnostics;
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
/// CPU float32 generator seeded with seed + i, the Euler flow loop, VAE decode and image encode. Images run one at a
/// time (batch 1), so an image depends on its seed only, not on n or its neighbours. Not thread-safe: one thread owns it.
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

    /// <summary>Runs a request. Bad input throws <see cref="ArgumentException"/> (or <see cref="ImageDecodeException"/>) before any model work.</summary>
    public GenerationResult Generate(GenerationRequest request, Action<GenerationStep>? onStep = null, CancellationToken cancellationToken = default)
    {
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

        var timings = new List<StageTiming>();
        var sw = Stopwatch.StartNew();
        void Stage(string name) { timings.Add(new StageTiming(name, sw.Elapsed.TotalMilliseconds)); sw.Restart(); }

        // Decode every reference first: an unreadable image fails before any model work.
        var images = request.References.Select((b, k) =>
        {
            try { return codec.Decode(b); }
            catch (ImageDecodeException e) { throw new ArgumentException($"image {k + 1}: {e.Message}", e); }
        }).ToList();
        var (width, height) = request.Size.Resolve(options.Sizes, images.Count > 0 ? (images[0].Width, images[0].Height) : null);
        Stage("reference_decode");

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        bool hit = prompts.TryGet(request.Prompt, out var txt);
        if (!hit)
        {
            txt = EncodePrompt(request.Prompt);
            prompts.Add(request.Prompt, txt);
        }
        Tensor? uncond = null;
        if (!card.Sampling.Distilled)
        {
            if (!prompts.TryGet("", out uncond)) { uncond = EncodePrompt(""); prompts.Add("", uncond); }
        }
        Stage("text_encode");

        Tensor? refTokens = null, refIds = null;
        if (images.Count > 0)
        {
            long cap = images.Count == 1 ? options.SingleReferencePixels : options.MultiReferencePixels;
            var latents = request.References.Select((bytes, k) => ReferenceLatent(bytes, images[k], cap)).ToList();
            (refTokens, refIds) = Flux2Packing.ReferenceTokens(latents);
            refTokens = refTokens.to(Model.Transformer.DType);
        }
        Stage("reference_encode");

        long h = height / 16, w = width / 16;
        var imgIds = LatentIdsFor(h, w);                                          // [1, h*w, 4]
        var (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(!card.Sampling.Distilled ? cat([uncond!, txt], 0) : txt);
        ctx = ctx.to(Model.Transformer.DType);
        var schedule = FlowSchedule.GetSchedule(steps, (int)(h * w));
        var outputs = new List<GeneratedImage>();
        for (int i = 0; i < request.Count; i++)
        {
            using var imageScope = NewDisposeScope();
            long s = seed + i;
            var noise = Noise(s, h, w);                                          // [1, h*w, 128]
            int image = i;
            Action<DenoiseStep> step = d =>
            {
                Stage($"denoise[{image}].step{d.Index}");
                onStep?.Invoke(new GenerationStep(image, d.Index, d.Count, d.TCurr, d.Latents));
            };
            var final = Sample(Model.Transformer, card.Sampling.Distilled, noise, imgIds, ctx, ctxIds, schedule, guidance, refTokens, refIds, step, cancellationToken);
            var grid = Flux2Packing.Unpack(final, imgIds);                      // [1, 128, h, w]
            var decoded = Model.Vae.Decode(grid);                               // [1, 3, H, W]
            Stage($"decode[{i}]");
            var encoded = ImageCodec.Encode(decoded, request.Format, request.Quality);
            Stage($"image_encode[{i}]");
            outputs.Add(new GeneratedImage(encoded, s, width, height));
        }
        return new GenerationResult(outputs, width, height, seed, steps, guidance, images.Count, hit, timings);
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
        long pixels = (long)image.Width * image.Height;
        if (pixels <= cap) return image;
        double scale = Math.Sqrt((double)cap / pixels);
        return ImageCodec.Resize(image, Math.Max(1, (int)(image.Width * scale)), Math.Max(1, (int)(image.Height * scale)));
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
