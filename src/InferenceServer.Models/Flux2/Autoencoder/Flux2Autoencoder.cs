using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Flux2.Autoencoder;

/// <summary>
/// The FLUX.2 autoencoder (BFL <c>AutoEncoder</c>): <c>encoder</c>, <c>decoder</c> and <c>bn</c>, whose running statistics
/// normalise the 2x2-patchified latent into the 128-channel tokens the transformer sees. State-dict keys are BFL's
/// (<c>encoder.down.0.block.0.norm1.weight</c>, <c>decoder.up.3.upsample.conv.weight</c>, <c>bn.running_mean</c>).
/// Encode and decode run in the dtype of the weights (float32 or bfloat16) on their device; the BatchNorm
/// normalisation and the returned tokens and images are float32.
/// </summary>
public sealed class Flux2Autoencoder : Module, ITileDecoder
{
    readonly Encoder encoder;
    readonly Decoder decoder;
    readonly LatentBatchNorm bn;

    /// <summary>The hyper-parameters this instance was built from.</summary>
    public AutoEncoderConfig Config { get; }

    /// <summary>Builds the model with random weights (load a checkpoint with <see cref="LoadWeights"/>); inference only.</summary>
    public Flux2Autoencoder(AutoEncoderConfig config, Device? device = null) : base(nameof(Flux2Autoencoder))
    {
        config.Validate();
        Config = config;
        encoder = new Encoder(config, device: device);
        decoder = new Decoder(config, device: device);
        bn = new LatentBatchNorm(config.TokenChannels, device: device);
        RegisterComponents();
        foreach (var p in parameters()) p.requires_grad = false;
        eval();
    }

    /// <summary>
    /// Moves the model to <paramref name="device"/> and casts the encoder and decoder to <paramref name="dtype"/>
    /// (float32 or bfloat16); the BatchNorm statistics stay float32.
    /// </summary>
    public Flux2Autoencoder To(ScalarType dtype, Device? device = null)
    {
        if (device is not null) this.to(device);
        encoder.to(dtype);
        decoder.to(dtype);
        return this;
    }

    /// <summary>The dtype of the convolution weights (what encode/decode compute in).</summary>
    public ScalarType ComputeType => decoder.parameters().First().dtype;

    /// <summary>The device of the weights.</summary>
    public Device Device => decoder.parameters().First().device;

    /// <summary>Image <c>[B, in_channels, H, W]</c> in [-1, 1], H and W multiples of 8 -> moments <c>[B, 2*z, H/8, W/8]</c> (float32).</summary>
    public Tensor EncodeMoments(Tensor image)
    {
        CheckImage(image, nameof(image), Config.DownFactor);
        using var _ = no_grad();
        using var x = Runtime.ComputeDevice.Upload(image, Device, ComputeType); // a host image bound for CUDA goes through pinned memory
        using var moments = encoder.forward(x);                              // [B, 2z, H/8, W/8]
        return moments.to(ScalarType.Float32);
    }

    /// <summary>
    /// BFL <c>AutoEncoder.encode</c>: image <c>[B, in_channels, H, W]</c> in [-1, 1], H and W multiples of 16 ->
    /// normalised tokens <c>[B, 128, H/16, W/16]</c> (Gaussian mean, 2x2 patchify, BatchNorm running statistics), float32.
    /// </summary>
    public Tensor Encode(Tensor image)
    {
        CheckImage(image, nameof(image), Config.DownFactor * Config.PatchSize.Max());
        using var scope = NewDisposeScope();
        var moments = EncodeMoments(image);                                  // [B, 2z, H/8, W/8]
        var mean = moments.narrow(1, 0, Config.ZChannels);                   // [B, z, H/8, W/8]
        return Normalize(Patchify(mean)).MoveToOuterDisposeScope();          // [B, 128, H/16, W/16]
    }

    /// <summary>
    /// BFL <c>AutoEncoder.decode</c>: tokens <c>[B, 128, h, w]</c> -> image <c>[B, out_ch, 16h, 16w]</c>, float32, not clamped.
    /// Decodes in tiles or one sample at a time when <paramref name="options"/>' memory budget requires it.
    /// </summary>
    public Tensor Decode(Tensor tokens, VaeDecodeOptions? options = null)
    {
        CheckLatent(tokens, nameof(tokens), Config.TokenChannels);
        using var scope = NewDisposeScope();
        var z = Unpatchify(InvNormalize(tokens));                            // [B, z, 2h, 2w]
        return DecodeLatent(z, options).MoveToOuterDisposeScope();
    }

    /// <summary>The decoder alone: latent <c>[B, z_channels, h, w]</c> -> image <c>[B, out_ch, 8h, 8w]</c>, float32, not clamped.</summary>
    public Tensor DecodeLatent(Tensor z, VaeDecodeOptions? options = null)
    {
        CheckLatent(z, nameof(z), Config.ZChannels);
        using var _ = no_grad();
        return TiledDecoding.Decode(this, z, options ?? VaeDecodeOptions.Default);
    }

    Tensor ITileDecoder.DecodeWhole(Tensor z) => DecodeWhole(z);

    /// <summary>Runs the decoder on one latent (no tiling) and returns float32.</summary>
    internal Tensor DecodeWhole(Tensor z)
    {
        using var x = z.to(ComputeType, Device);
        using var image = decoder.forward(x);                                // [B, out_ch, 8h, 8w]
        return image.to(ScalarType.Float32);
    }

    /// <summary><c>(tok - running_mean) / sqrt(running_var + eps)</c> per channel (BatchNorm2d eval, affine=False), float32.</summary>
    public Tensor Normalize(Tensor tok)
    {
        using var scope = NewDisposeScope();
        var (mean, std) = Stats(tok.device);
        return tok.to(ScalarType.Float32).sub(mean).div_(std).MoveToOuterDisposeScope(); // [B, 128, h, w]
    }

    /// <summary>BFL <c>inv_normalize</c>: <c>tokens * sqrt(running_var + eps) + running_mean</c>, float32.</summary>
    public Tensor InvNormalize(Tensor tokens)
    {
        using var scope = NewDisposeScope();
        var (mean, std) = Stats(tokens.device);
        return tokens.to(ScalarType.Float32).mul(std).add_(mean).MoveToOuterDisposeScope(); // [B, 128, h, w]
    }

    (Tensor Mean, Tensor Std) Stats(Device device)
    {
        var mean = bn.running_mean.to(ScalarType.Float32, device).view(1, -1, 1, 1);        // [1, 128, 1, 1]
        var std = bn.running_var.to(ScalarType.Float32, device).add(Config.BatchNormEps).sqrt_().view(1, -1, 1, 1);
        return (mean, std);
    }

    /// <summary>The config's patchify (<see cref="LatentTokens.Patchify"/>).</summary>
    public Tensor Patchify(Tensor z) => LatentTokens.Patchify(z, Config.PatchSize[0], Config.PatchSize[1]);

    /// <summary>Inverse of <see cref="Patchify"/>.</summary>
    public Tensor Unpatchify(Tensor tok) => LatentTokens.Unpatchify(tok, Config.PatchSize[0], Config.PatchSize[1]);

    /// <summary>
    /// Loads a checkpoint (a safetensors file, a sharded source) in BFL or diffusers layout, detected from the keys;
    /// diffusers keys are read through <see cref="AutoEncoderKeyMap.AsBfl"/>. Values are converted to each target's
    /// dtype. strict: any missing, unexpected or mis-shaped key throws (see <see cref="StateDict.Load"/>).
    /// A subset (only <c>decoder.*</c> and <c>bn.*</c>) loads with <paramref name="strict"/> false.
    /// </summary>
    public LoadReport LoadWeights(ITensorSource source, bool strict = true)
    {
        if (!AutoEncoderKeyMap.IsDiffusersLayout(source.Entries.Select(e => e.Name))) return StateDict.Load(this, source, strict);
        using var bfl = AutoEncoderKeyMap.AsBfl(source, Config.NumLevels);
        return StateDict.Load(this, bfl, strict);
    }

    void CheckImage(Tensor image, string name, int multiple)
    {
        if (image.dim() != 4 || image.shape[0] == 0 || image.shape[1] != Config.InChannels
            || image.shape[2] == 0 || image.shape[3] == 0 || image.shape[2] % multiple != 0 || image.shape[3] % multiple != 0)
            throw new ArgumentException(
                $"{name}: expected [B>0, {Config.InChannels}, H, W] with H and W positive multiples of {multiple}, got [{string.Join(", ", image.shape)}]", name);
        if (!image.is_floating_point()) throw new ArgumentException($"{name}: expected a floating-point image in [-1, 1], got {image.dtype}", name);
    }

    static void CheckLatent(Tensor latent, string name, int channels)
    {
        if (latent.dim() != 4 || latent.shape[0] == 0 || latent.shape[1] != channels || latent.shape[2] == 0 || latent.shape[3] == 0)
            throw new ArgumentException($"{name}: expected [B>0, {channels}, h>0, w>0], got [{string.Join(", ", latent.shape)}]", name);
        if (!latent.is_floating_point()) throw new ArgumentException($"{name}: expected floating-point values, got {latent.dtype}", name);
    }
}

/// <summary><c>bn</c>: BatchNorm2d(affine=False) used only through its running statistics (buffers named as in PyTorch).</summary>
internal sealed class LatentBatchNorm : Module
{
    internal readonly Tensor running_mean;
    internal readonly Tensor running_var;
    internal readonly Tensor num_batches_tracked;

    public LatentBatchNorm(long channels, Device? device = null) : base("bn")
    {
        running_mean = zeros(channels, device: device);
        running_var = ones(channels, device: device);
        num_batches_tracked = zeros([], ScalarType.Int64, device: device);
        RegisterComponents();
    }
}
