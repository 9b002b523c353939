using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using F = TorchSharp.torch.nn.functional;

namespace InferenceServer.Models.Flux2.Autoencoder;

// The building blocks of BFL autoencoder.py. Field names are the state-dict keys. Forward passes free their
// large intermediates as soon as they are consumed (peak memory matters at 2K-4K), and every temporary is
// either disposed explicitly or owned by a dispose scope.

/// <summary>GroupNorm -> swish -> conv3x3, twice, plus a (1x1 <c>nin_shortcut</c> when the width changes) residual.</summary>
internal sealed class ResnetBlock : Module<Tensor, Tensor>
{
    readonly GroupNorm norm1;
    readonly Conv2d conv1;
    readonly GroupNorm norm2;
    readonly Conv2d conv2;
    readonly Conv2d? nin_shortcut;

    public ResnetBlock(long inChannels, long outChannels, AutoEncoderConfig c, Device? device = null) : base(nameof(ResnetBlock))
    {
        norm1 = GroupNorm(c.GroupNormGroups, inChannels, c.GroupNormEps, affine: true, device: device);
        conv1 = Conv2d(inChannels, outChannels, kernel_size: 3, stride: 1, padding: 1, device: device);
        norm2 = GroupNorm(c.GroupNormGroups, outChannels, c.GroupNormEps, affine: true, device: device);
        conv2 = Conv2d(outChannels, outChannels, kernel_size: 3, stride: 1, padding: 1, device: device);
        if (inChannels != outChannels) nin_shortcut = Conv2d(inChannels, outChannels, kernel_size: 1, stride: 1, padding: 0L, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        Tensor h;
        using (var a = norm1.forward(x)) h = conv1.forward(a.silu_());       // [B, Cout, H, W]
        var b = norm2.forward(h);                                            // [B, Cout, H, W]
        h.Dispose();
        using (b) h = conv2.forward(b.silu_());                              // [B, Cout, H, W]
        if (nin_shortcut is null) return h.add_(x);                          // x + h
        using var skip = nin_shortcut.forward(x);                            // [B, Cout, H, W]
        return h.add_(skip);
    }
}

/// <summary>Single-head self-attention over the H*W positions (row-major), 1x1 convs q/k/v/proj_out, residual.</summary>
internal sealed class AttnBlock : Module<Tensor, Tensor>
{
    readonly GroupNorm norm;
    readonly Conv2d q;
    readonly Conv2d k;
    readonly Conv2d v;
    readonly Conv2d proj_out;

    public AttnBlock(long channels, AutoEncoderConfig c, Device? device = null) : base(nameof(AttnBlock))
    {
        norm = GroupNorm(c.GroupNormGroups, channels, c.GroupNormEps, affine: true, device: device);
        q = Conv2d(channels, channels, kernel_size: 1, device: device);
        k = Conv2d(channels, channels, kernel_size: 1, device: device);
        v = Conv2d(channels, channels, kernel_size: 1, device: device);
        proj_out = Conv2d(channels, channels, kernel_size: 1, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        var n = norm.forward(x);                                             // [B, C, H, W]
        Tensor Tokens(Conv2d proj) => proj.forward(n).reshape(b, 1, c, h * w).transpose(2, 3).contiguous(); // [B, 1, HW, C]
        var attn = F.scaled_dot_product_attention(Tokens(q), Tokens(k), Tokens(v)); // [B, 1, HW, C], softmax(q k^T / sqrt(C)) v
        var o = attn.transpose(2, 3).reshape(b, c, h, w);                    // [B, C, H, W]
        return proj_out.forward(o).add_(x).MoveToOuterDisposeScope();        // x + proj_out(attn)
    }
}

/// <summary>Zero-pad right and bottom by one, then a stride-2 3x3 conv (no padding): n -> floor(n/2).</summary>
internal sealed class Downsample : Module<Tensor, Tensor>
{
    readonly Conv2d conv;

    public Downsample(long channels, Device? device = null) : base(nameof(Downsample))
    {
        conv = Conv2d(channels, channels, kernel_size: 3, stride: 2, padding: 0L, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var padded = F.pad(x, [0, 1, 0, 1], PaddingModes.Constant, 0); // [B, C, H+1, W+1]
        return conv.forward(padded);                                         // [B, C, H/2, W/2]
    }
}

/// <summary>Nearest-neighbour x2, then a 3x3 conv.</summary>
internal sealed class Upsample : Module<Tensor, Tensor>
{
    readonly Conv2d conv;

    public Upsample(long channels, Device? device = null) : base(nameof(Upsample))
    {
        conv = Conv2d(channels, channels, kernel_size: 3, stride: 1, padding: 1, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var up = F.interpolate(x, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest); // [B, C, 2H, 2W]
        return conv.forward(up);                                             // [B, C, 2H, 2W]
    }
}

/// <summary><c>mid</c>: ResNet block, attention, ResNet block at the lowest resolution.</summary>
internal sealed class MidBlock : Module<Tensor, Tensor>
{
    readonly ResnetBlock block_1;
    readonly AttnBlock attn_1;
    readonly ResnetBlock block_2;

    public MidBlock(long channels, AutoEncoderConfig c, Device? device = null) : base("mid")
    {
        block_1 = new ResnetBlock(channels, channels, c, device: device);
        attn_1 = new AttnBlock(channels, c, device: device);
        block_2 = new ResnetBlock(channels, channels, c, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h1 = block_1.forward(x);
        using var h2 = attn_1.forward(h1);
        return block_2.forward(h2);
    }
}

/// <summary>One resolution level: <c>block.N</c> ResNet blocks and an optional <c>downsample</c> / <c>upsample</c>.</summary>
internal sealed class Level : Module
{
    internal readonly ModuleList<ResnetBlock> block;
    internal readonly Downsample? downsample;
    internal readonly Upsample? upsample;

    public Level(IEnumerable<ResnetBlock> blocks, Downsample? downsample, Upsample? upsample) : base(nameof(Level))
    {
        block = new ModuleList<ResnetBlock>(blocks.ToArray());
        this.downsample = downsample;
        this.upsample = upsample;
        RegisterComponents();
    }
}
