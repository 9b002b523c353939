using InferenceServer.Models.Flux2;
using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// Z-Image's VAE: the FLUX.1 AE as a diffusers <c>AutoencoderKL</c> (16 latent channels, no quant / post-quant conv,
/// GroupNorm eps 1e-6, 8x down-sampling), working in DiT space: <see cref="Decode"/> takes the transformer's latents and
/// applies <c>z = latents / scaling + shift</c> first, <see cref="Encode"/> returns <c>(mean - shift) * scaling</c>.
/// There is no BatchNorm and no 2x2 packing (the Z-Image transformer patchifies itself).
/// The ResNet / attention / up- and down-sampling maths are FLUX.2's, so the blocks are shared
/// (<see cref="Flux2.Autoencoder.Encoder"/>, <see cref="Flux2.Autoencoder.Decoder"/>, built from <see cref="ZImageVaeConfig.ToBlocks"/>):
/// the module's own keys are BFL's and a diffusers checkpoint (<c>decoder.up_blocks.0</c> = the deepest level,
/// <c>mid_block.attentions.0.to_q</c> a Linear) is read through <see cref="AutoEncoderKeyMap"/>. BFL-named FLUX.1
/// <c>ae.safetensors</c> files load as well. Runs in float32 unless cast (the official pipeline always keeps the VAE float32).
/// </summary>
public sealed class ZImageAutoencoder : Module, ITileDecoder
{
    readonly Encoder encoder;
    readonly Decoder decoder;

    /// <summary>The diffusers config this instance was built from.</summary>
    public ZImageVaeConfig Config { get; }

    /// <summary>The shared blocks' config (<see cref="ZImageVaeConfig.ToBlocks"/>).</summary>
    public AutoEncoderConfig Blocks { get; }

    AutoEncoderConfig ITileDecoder.Config => Blocks;

    /// <summary>Builds the model with random weights (load them with <see cref="LoadWeights"/>); inference only, float32.</summary>
    public ZImageAutoencoder(ZImageVaeConfig config, Device? device = null) : base(nameof(ZImageAutoencoder))
    {
        Config = config;
        Blocks = config.ToBlocks();
        Blocks.Validate();
        encoder = new Encoder(Blocks, device: device);
        decoder = new Decoder(Blocks, device: device);
        RegisterComponents();
        foreach (var p in parameters()) p.requires_grad = false;
        eval();
    }

    /// <summary>
    /// Opens a diffusers <c>vae/</c> folder (config.json + safetensors) or a single AE file / folder without config
    /// (architecture from the tensor shapes, <see cref="ZImageVaeConfig.FromTensors"/>), strictly: a missing,
    /// unexpected or mis-shaped tensor throws, naming them. The model is float32 on the CPU until <see cref="To"/>.
    /// </summary>
    public static ZImageAutoencoder Load(string path)
    {
        string configPath = Path.Combine(path, "config.json");
        using var source = Checkpoint.Open(path);
        var config = Directory.Exists(path) && File.Exists(configPath) ? ZImageVaeConfig.Load(configPath) : ZImageVaeConfig.FromTensors(source.Entries);
        // Built on meta and given uninitialised storage: the strict load below fills every tensor (no random init to overwrite).
        var ae = Weights.MetaModules.Materialize(new ZImageAutoencoder(config, Weights.MetaModules.Meta), CPU);
        try { ae.LoadWeights(source); }
        catch { ae.Dispose(); throw; }
        return ae;
    }

    /// <summary>Moves the model to <paramref name="device"/> and casts it to <paramref name="dtype"/> (float32 by default, as the official VAE).</summary>
    public ZImageAutoencoder To(ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        if (device is not null) this.to(device);
        this.to(dtype);
        return this;
    }

    /// <summary>The dtype encode/decode compute in.</summary>
    public ScalarType ComputeType => decoder.parameters().First().dtype;

    /// <summary>The device of the weights.</summary>
    public Device Device => decoder.parameters().First().device;

    /// <summary>
    /// DiT-space latents <c>[B, 16, h, w]</c> -> pixels <c>[B, 3, 8h, 8w]</c> in about [-1, 1] (float32, not clamped):
    /// <c>decoder(latents / scaling + shift)</c>, the official <c>generate()</c> tail. Tiled as FLUX.2's under a memory budget.
    /// </summary>
    public Tensor Decode(Tensor latents, VaeDecodeOptions? options = null)
    {
        CheckLatent(latents, nameof(latents));
        using var z = FromDiTLatents(latents);                               // [B, 16, h, w]
        return DecodeLatent(z, options);
    }

    /// <summary>The decoder alone on VAE-space <paramref name="z"/> <c>[B, 16, h, w]</c> (diffusers <c>vae.decode</c>), float32.</summary>
    public Tensor DecodeLatent(Tensor z, VaeDecodeOptions? options = null)
    {
        CheckLatent(z, nameof(z));
        using var _ = no_grad();
        return TiledDecoding.Decode(this, z, options ?? VaeDecodeOptions.Default);
    }

    /// <summary>
    /// Pixels <c>[B, 3, H, W]</c> in [-1, 1] (H, W multiples of 8) -> DiT-space latents <c>(mean - shift) * scaling</c>
    /// <c>[B, 16, H/8, W/8]</c>, float32 (diffusers img2img with the distribution's mode).
    /// </summary>
    public Tensor Encode(Tensor pixels)
    {
        using var d = EncodeDistribution(pixels);
        return ToDiTLatents(d.Mean);
    }

    /// <summary>The encoder's latent distribution (VAE space) of <paramref name="pixels"/>; the caller disposes it.</summary>
    public LatentDistribution EncodeDistribution(Tensor pixels)
    {
        using var moments = EncodeMoments(pixels);
        return new LatentDistribution(moments);
    }

    /// <summary>The encoder's raw output <c>[B, 2*16, H/8, W/8]</c> (mean, then log-variance), float32.</summary>
    public Tensor EncodeMoments(Tensor pixels)
    {
        if (pixels.dim() != 4 || pixels.shape[0] == 0 || pixels.shape[1] != Config.InChannels || pixels.shape[2] == 0 || pixels.shape[3] == 0
            || pixels.shape[2] % Config.DownFactor != 0 || pixels.shape[3] % Config.DownFactor != 0 || !pixels.is_floating_point())
            throw new ArgumentException($"pixels: expected floating-point [B>0, {Config.InChannels}, H, W] with H and W positive multiples of " +
                $"{Config.DownFactor}, got {pixels.dtype} [{string.Join(", ", pixels.shape)}]", nameof(pixels));
        using var _ = no_grad();
        using var x = Runtime.ComputeDevice.Upload(pixels, Device, ComputeType); // a host image bound for CUDA goes through pinned memory
        using var moments = encoder.forward(x);                              // [B, 32, H/8, W/8]
        return moments.to(ScalarType.Float32);
    }

    /// <summary>VAE space -> DiT space: <c>(z - shift) * scaling</c> in float32 (diffusers img2img).</summary>
    public Tensor ToDiTLatents(Tensor z)
    {
        using var f = z.to(ScalarType.Float32);
        using var shifted = f.sub(Config.Shift);
        return shifted.mul(Config.ScalingFactor);
    }

    /// <summary>DiT space -> VAE space: <c>latents / scaling + shift</c> in float32 (the official <c>generate()</c> tail).</summary>
    public Tensor FromDiTLatents(Tensor latents)
    {
        using var f = latents.to(ScalarType.Float32);
        using var scaled = f.div(Config.ScalingFactor);
        return scaled.add(Config.Shift);
    }

    Tensor ITileDecoder.DecodeWhole(Tensor z)
    {
        using var x = z.to(ComputeType, Device);
        using var image = decoder.forward(x);                                // [B, 3, 8h, 8w]
        return image.to(ScalarType.Float32);
    }

    /// <summary>
    /// Loads a checkpoint in diffusers (<c>vae/diffusion_pytorch_model.safetensors</c>) or BFL layout, detected from the
    /// keys. strict: every tensor the module has must be there with its shape and nothing else, else an
    /// <see cref="InvalidDataException"/> names them (in the checkpoint's own naming) before anything is copied.
    /// Not strict (e.g. a decoder-only file): what matches is loaded and the report says what did not.
    /// </summary>
    public LoadReport LoadWeights(ITensorSource source, bool strict = true)
    {
        bool diffusers = AutoEncoderKeyMap.IsDiffusersLayout(source.Entries.Select(e => e.Name));
        int levels = Blocks.NumLevels;
        var expected = StateSpecs(diffusers).ToDictionary(s => s.Name, s => s.Shape, StringComparer.Ordinal);
        var present = source.Entries.Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
        var report = new LoadReport(
            [.. expected.Keys.Where(k => !present.Contains(k))],
            [.. source.Entries.Where(e => !expected.ContainsKey(e.Name)).Select(e => e.Name)],
            [.. source.Entries.Where(e => expected.TryGetValue(e.Name, out var s) && !s.SequenceEqual(e.Shape))
                .Select(e => new ShapeMismatch(e.Name, expected[e.Name], e.Shape))]);
        if (strict) report.ThrowIfNotClean(source is SafetensorsFile f ? f.Path : source is ShardedSafetensors sh ? sh.Path : "vae checkpoint");
        using var bfl = diffusers ? AutoEncoderKeyMap.AsBfl(source, levels) : new NonDisposingSource(source);
        var loaded = StateDict.Load(this, bfl, strict: false);
        return report with { Loaded = loaded.Loaded };
    }

    /// <summary>
    /// Every tensor of the VAE of <paramref name="config"/>, diffusers names and shapes, module order (e.g. for a
    /// random full-size <c>vae/diffusion_pytorch_model.safetensors</c>; see <see cref="RandomTensor"/>).
    /// </summary>
    public static IReadOnlyList<TensorSpec> Specs(ZImageVaeConfig config, ScalarType dtype = ScalarType.Float32)
    {
        using var ae = new ZImageAutoencoder(config);
        var st = SafetensorsDTypes.FromScalarType(dtype);
        return [.. ae.StateSpecs(diffusers: true).Select(s => s with { DType = st })];
    }

    /// <summary>A random value for a spec of <see cref="Specs"/>: the FLUX.2 random VAE's init (weights ~ N(0, 1/fan-in), GroupNorm 1, biases 0), seeded by (seed, name).</summary>
    public static Tensor RandomTensor(TensorSpec spec, long seed) => Flux2RandomModel.VaeTensor(spec, seed);

    /// <summary>This module's state dict as specs, in BFL or diffusers naming (attention weights Linear <c>[C, C]</c> in diffusers).</summary>
    IReadOnlyList<TensorSpec> StateSpecs(bool diffusers)
    {
        int levels = Blocks.NumLevels;
        using var scope = NewDisposeScope();
        return [.. state_dict().Select(kv =>
        {
            var spec = TensorSpec.Of(kv.Key, kv.Value);
            if (!diffusers) return spec;
            bool attention = AutoEncoderKeyMap.IsAttentionWeight(kv.Key);
            return spec with { Name = AutoEncoderKeyMap.ToDiffusers(kv.Key, levels), Shape = attention ? kv.Value.shape[..2] : kv.Value.shape };
        })];
    }

    void CheckLatent(Tensor latent, string name)
    {
        if (latent.dim() != 4 || latent.shape[0] == 0 || latent.shape[1] != Config.LatentChannels || latent.shape[2] == 0 || latent.shape[3] == 0
            || !latent.is_floating_point())
            throw new ArgumentException($"{name}: expected floating-point [B>0, {Config.LatentChannels}, h>0, w>0], got {latent.dtype} [{string.Join(", ", latent.shape)}]", name);
    }
}
