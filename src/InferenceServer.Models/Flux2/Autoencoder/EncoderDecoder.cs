using InferenceServer.Models.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Flux2.Autoencoder;

/// <summary>
/// BFL <c>Encoder</c>: conv_in, <c>down.i</c> levels (ResNet blocks, Downsample except at the last level), mid block,
/// norm_out, swish, conv_out and <c>quant_conv</c> (absent when <see cref="AutoEncoderConfig.UseQuantConv"/> is false,
/// as in FLUX.1). Output: the Gaussian moments <c>[B, 2*z_channels, H/8, W/8]</c>
/// (mean first, then log-variance).
/// </summary>
public sealed class Encoder : Module<Tensor, Tensor>
{
    readonly Conv2d? quant_conv;
    readonly Conv2d conv_in;
    readonly ModuleList<Level> down;
    readonly MidBlock mid;
    readonly GroupNorm norm_out;
    readonly Conv2d conv_out;

    /// <summary>Builds the encoder of <paramref name="c"/> (random weights until loaded).</summary>
    public Encoder(AutoEncoderConfig c, Device? device = null) : base(nameof(Encoder))
    {
        if (c.UseQuantConv) quant_conv = Conv2d(2 * c.ZChannels, 2 * c.ZChannels, kernel_size: 1, device: device);
        conv_in = Conv2d(c.InChannels, c.Ch, kernel_size: 3, stride: 1, padding: 1, device: device);
        down = new ModuleList<Level>();
        long blockIn = c.Ch;
        for (int level = 0; level < c.NumLevels; level++)
        {
            long blockOut = (long)c.Ch * c.ChMult[level];
            var blocks = new List<ResnetBlock>();
            for (int j = 0; j < c.NumResBlocks; j++) { blocks.Add(new ResnetBlock(blockIn, blockOut, c, device: device)); blockIn = blockOut; }
            down.Add(new Level(blocks, level != c.NumLevels - 1 ? new Downsample(blockIn, device: device) : null, null));
        }
        mid = new MidBlock(blockIn, c, device: device);
        norm_out = GroupNorm(c.GroupNormGroups, blockIn, c.GroupNormEps, affine: true, device: device);
        conv_out = Conv2d(blockIn, 2 * c.ZChannels, kernel_size: 3, stride: 1, padding: 1, device: device);
        RegisterComponents();
    }

    /// <summary><c>[B, in_channels, H, W]</c> -> moments <c>[B, 2*z_channels, H/8, W/8]</c>.</summary>
    public override Tensor forward(Tensor x)
    {
        var h = conv_in.forward(x);                                          // [B, ch, H, W]
        foreach (var level in down)
        {
            foreach (var block in level.block) h = Replace(h, block.call(h));
            if (level.downsample is not null) h = Replace(h, level.downsample.call(h)); // [B, C, H/2, W/2]
        }
        h = Replace(h, mid.call(h));                                         // [B, C_last, H/8, W/8]
        h = Replace(h, norm_out.forward(h).silu_());
        h = Replace(h, conv_out.forward(h));                                 // [B, 2z, H/8, W/8]
        return quant_conv is null ? h : Replace(h, quant_conv.forward(h));   // [B, 2z, H/8, W/8]
    }

    /// <summary>
    /// Frees the previous activation once the next one exists; between blocks is also where a cancelled request stops
    /// (<see cref="ComputeCancellation"/>: a 4K decode on CPU runs minutes, one block seconds). Blocks are run with
    /// <c>call()</c>, which runs forward hooks (tests observe where a decode stops with them).
    /// </summary>
    internal static Tensor Replace(Tensor previous, Tensor next)
    {
        previous.Dispose();
        return ComputeCancellation.Checked(next);
    }
}

/// <summary>
/// BFL <c>Decoder</c>: <c>post_quant_conv</c> (unless <see cref="AutoEncoderConfig.UsePostQuantConv"/> is false), conv_in, mid block, <c>up.i</c> levels run from the lowest resolution
/// (<c>up.{L-1}</c>) to <c>up.0</c> with num_res_blocks+1 ResNet blocks each and an Upsample except at level 0,
/// norm_out, swish, conv_out. <c>[B, z_channels, h, w]</c> -> <c>[B, out_ch, 8h, 8w]</c>.
/// </summary>
public sealed class Decoder : Module<Tensor, Tensor>
{
    readonly Conv2d? post_quant_conv;
    readonly Conv2d conv_in;
    readonly MidBlock mid;
    readonly ModuleList<Level> up;
    readonly GroupNorm norm_out;
    readonly Conv2d conv_out;

    /// <summary>Builds the decoder of <paramref name="c"/> (random weights until loaded).</summary>
    public Decoder(AutoEncoderConfig c, Device? device = null) : base(nameof(Decoder))
    {
        if (c.UsePostQuantConv) post_quant_conv = Conv2d(c.ZChannels, c.ZChannels, kernel_size: 1, device: device);
        long blockIn = (long)c.Ch * c.ChMult[^1];
        conv_in = Conv2d(c.ZChannels, blockIn, kernel_size: 3, stride: 1, padding: 1, device: device);
        mid = new MidBlock(blockIn, c, device: device);
        var levels = new Level[c.NumLevels];
        for (int level = c.NumLevels - 1; level >= 0; level--)
        {
            long blockOut = (long)c.Ch * c.ChMult[level];
            var blocks = new List<ResnetBlock>();
            for (int j = 0; j < c.NumResBlocks + 1; j++) { blocks.Add(new ResnetBlock(blockIn, blockOut, c, device: device)); blockIn = blockOut; }
            levels[level] = new Level(blocks, null, level != 0 ? new Upsample(blockIn, device: device) : null);
        }
        up = new ModuleList<Level>(levels);
        norm_out = GroupNorm(c.GroupNormGroups, blockIn, c.GroupNormEps, affine: true, device: device);
        conv_out = Conv2d(blockIn, c.OutCh, kernel_size: 3, stride: 1, padding: 1, device: device);
        RegisterComponents();
    }

    /// <summary>
    /// Latent <c>[B, z_channels, h, w]</c> -> image <c>[B, out_ch, 8h, 8w]</c> (not clamped). In bf16 everything but
    /// <c>conv_out</c> runs in bf16; <c>conv_out</c> runs in float32 and the image is float32 (see <see cref="OutputConvFloat32"/>).
    /// </summary>
    public override Tensor forward(Tensor z)
    {
        Tensor h;
        if (post_quant_conv is null) h = conv_in.forward(z);                 // [B, C_last, h, w]
        else using (var q = post_quant_conv.forward(z)) h = conv_in.forward(q); // [B, z, h, w] -> [B, C_last, h, w]
        h = Encoder.Replace(h, mid.call(h));
        for (int level = up.Count - 1; level >= 0; level--)
        {
            foreach (var block in up[level].block) h = Encoder.Replace(h, block.call(h));
            if (up[level].upsample is { } upsample) h = Encoder.Replace(h, upsample.call(h)); // [B, C, 2h, 2w]
        }
        h = Encoder.Replace(h, norm_out.forward(h).silu_());                 // [B, ch, 8h, 8w]
        if (h.dtype == ScalarType.Float32) return Encoder.Replace(h, conv_out.forward(h)); // [B, out_ch, 8h, 8w]
        return Encoder.Replace(h, OutputConvFloat32(h));                     // [B, out_ch, 8h, 8w], float32
    }

    /// <summary>
    /// <c>conv_out</c> of a reduced-precision (bf16/fp16) activation, computed in float32 and returned as float32.
    /// libtorch 2.10's CPU bfloat16 3x3 convolution is wrong for fewer than 16 output channels on an NCHW input
    /// (measured on an AVX512-BF16 CPU: 25-45% of the output range off; 0.2% with an NHWC input or in float32), and
    /// conv_out has out_ch = 3. A batch-1 decode stays NCHW, so every bf16 decode of one image went through that kernel.
    /// Float32 here also spares the image a final bf16 rounding (2^-9 relative); conv_out is well under 1% of the decoder's FLOPs
    /// and its weights are tiny, so they are upcast per call (the module keeps the weights' dtype for loading and ComputeType).
    /// </summary>
    Tensor OutputConvFloat32(Tensor h)
    {
        using var x = h.to(ScalarType.Float32);                              // [B, ch, 8h, 8w]
        using var w = conv_out.weight!.to(ScalarType.Float32);               // [out_ch, ch, 3, 3]
        using var b = conv_out.bias?.to(ScalarType.Float32);                 // [out_ch]
        return functional.conv2d(x, w, b, strides: [1, 1], padding: [1, 1]);
    }
}
