using static TorchSharp.torch;

namespace InferenceServer.Models.ZImage;

/// <summary>The functional pieces of the Z-Image forward: RoPE table and rotation, position ids, sequence padding.</summary>
public static class ZImageMath
{
    /// <summary>Rows of padding that bring <paramref name="length"/> to a multiple of <paramref name="multiple"/> (Python's <c>(-L) % m</c>: 0 for an exact multiple).</summary>
    public static long PadLength(long length, long multiple) => (multiple - length % multiple) % multiple;

    /// <summary>
    /// The official <c>RopeEmbedder</c> for integer positions <paramref name="ids"/> [N, 3]: axis a has axes_dims[a]/2 frequencies
    /// <c>1 / theta^(2j/axes_dims[a])</c> (float64), angle = pos * omega in float64 cast to float32 (the reference's
    /// <c>outer(...).float()</c>), then cos/sin in float32 (its <c>torch.polar</c> on float32). Returns [N, head_dim/2, 2] (cos, sin).
    /// </summary>
    public static Tensor RopeTable(Tensor ids, IReadOnlyList<int> axesDims, double theta)
    {
        using var s = NewDisposeScope();
        var parts = new List<Tensor>();
        for (int a = 0; a < axesDims.Count; a++)
        {
            int d = axesDims[a];
            var omega = pow(theta, arange(0, d, 2, ScalarType.Float64, ids.device) / d).reciprocal(); // [d/2]
            var ang = (ids.select(-1, a).to(ScalarType.Float64).unsqueeze(-1) * omega).to(ScalarType.Float32); // [N, d/2]
            parts.Add(stack([ang.cos(), ang.sin()], -1));                                                     // [N, d/2, 2]
        }
        return cat(parts, -2).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Rotates adjacent pairs (x[2j], x[2j+1]) as the complex multiply <c>(x[2j] + i x[2j+1]) e^{i angle_j}</c>, in float32
    /// (the reference's <c>view_as_complex(x.float())</c>); result in x's dtype.
    /// </summary>
    /// <param name="x">[B, L, H, D]</param>
    /// <param name="freqs">[B, L, D/2, 2] (cos, sin) float32.</param>
    public static Tensor ApplyRope(Tensor x, Tensor freqs)
    {
        using var s = NewDisposeScope();
        var xf = x.to(ScalarType.Float32).view(x.shape[0], x.shape[1], x.shape[2], -1, 2); // [B, L, H, D/2, 2]
        var (re, im) = (xf.select(-1, 0), xf.select(-1, 1));
        var (cos, sin) = (freqs.select(-1, 0).unsqueeze(2), freqs.select(-1, 1).unsqueeze(2)); // [B, L, 1, D/2]
        var o = stack([re * cos - im * sin, re * sin + im * cos], -1);                      // [B, L, H, D/2, 2]
        return o.view(x.shape).to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>Caption row k (pads included): (1 + k, 0, 0). Returns [capPadded, 3] int64.</summary>
    public static Tensor CaptionPositions(long capPadded, Device device)
    {
        using var s = NewDisposeScope();
        var ids = zeros(capPadded, 3, ScalarType.Int64, device);
        ids[.., 0] = arange(1, capPadded + 1, ScalarType.Int64, device);
        return ids.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Image token (h, w) of a grid: (capPadded + 1, h, w), row-major; the <paramref name="pad"/> pad tokens after them: (0, 0, 0).
    /// Returns [gridH*gridW + pad, 3] int64.
    /// </summary>
    public static Tensor ImagePositions(long gridH, long gridW, long pad, long capPadded, Device device)
    {
        using var s = NewDisposeScope();
        var h = arange(gridH, ScalarType.Int64, device).view(-1, 1).expand(gridH, gridW).reshape(-1);
        var w = arange(gridW, ScalarType.Int64, device).view(1, -1).expand(gridH, gridW).reshape(-1);
        var ids = stack([full(gridH * gridW, capPadded + 1, ScalarType.Int64, device), h, w], -1); // [L, 3]
        return cat([ids, zeros(pad, 3, ScalarType.Int64, device)], 0).MoveToOuterDisposeScope();
    }

    /// <summary><paramref name="rows"/> [L, ...] followed by <paramref name="pad"/> copies of its last row (the official padding to a multiple of 32).</summary>
    public static Tensor RepeatLast(Tensor rows, long pad)
    {
        if (pad == 0) return rows.alias();
        using var s = NewDisposeScope();
        var last = rows[^1..];
        return cat([rows, last.expand([pad, .. last.shape[1..]])], 0).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>pad_sequence(batch_first=True, padding_value=0)</c>: [B, max L, ...] with zeros after each sequence. Also returns
    /// the [B, 1, 1, max L] bool key mask (true = a real or pad-token row), or null when all lengths are equal (no masking needed,
    /// as diffusers passes none; the result is the same).
    /// </summary>
    public static (Tensor Padded, Tensor? Mask) PadBatch(IReadOnlyList<Tensor> seqs)
    {
        using var s = NewDisposeScope();
        long max = seqs.Max(t => t.shape[0]);
        bool equal = seqs.All(t => t.shape[0] == max);
        var padded = stack(seqs.Select(t => t.shape[0] == max ? t : cat([t, zeros([max - t.shape[0], .. t.shape[1..]], t.dtype, t.device)], 0)).ToList(), 0);
        Tensor? mask = null;
        if (!equal)
        {
            var lens = tensor(seqs.Select(t => t.shape[0]).ToArray(), ScalarType.Int64, padded.device); // [B]
            mask = (arange(max, ScalarType.Int64, padded.device).unsqueeze(0) < lens.unsqueeze(1)).view(seqs.Count, 1, 1, max);
            mask.MoveToOuterDisposeScope();
        }
        return (padded.MoveToOuterDisposeScope(), mask);
    }
}
