using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.ZImage;

/// <summary>
/// Z-Image conditioned on a batch of rows (official <c>pipeline.generate</c> step body): the model sees time
/// <c>t = (1000 - 1000 sigma) / 1000</c> (0 = noise), predicts about <c>x0 - noise</c>, and the velocity is its negation.
/// CFG only when guidance &gt; 1 (the official threshold) and not truncated (<c>t &gt; cfg_truncation</c> turns it off):
/// positive and negative captions run as one masked batch, <c>pred = pos + g (pos - neg)</c>, optionally renormalised so
/// that <c>||pred|| &lt;= cfg_normalization ||pos||</c> (norms over the whole sample).
/// </summary>
public sealed class ZImageDenoiser(ZImageTransformer model, IReadOnlyList<Tensor> captions, Tensor? negative, double guidance,
    double cfgNormalization, double cfgTruncation, long h, long w) : IDenoiser
{
    List<Tensor> rows = [.. captions];

    /// <summary>Whether step <paramref name="sigma"/> applies CFG.</summary>
    public bool AppliesCfg(float sigma) =>
        negative is not null && guidance > 1 && !(cfgTruncation <= 1 && ZImageSchedule.ModelTime(sigma) > cfgTruncation);

    public Tensor Velocity(Tensor x, float sigma, int step)
    {
        using var scope = NewDisposeScope();
        long r = x.shape[0];
        if (r != rows.Count) throw new ArgumentException($"x has {r} rows, the denoiser holds {rows.Count} captions", nameof(x));
        float tModel = ZImageSchedule.ModelTime(sigma);
        var dtype = model.DType;
        if (!AppliesCfg(sigma))
        {
            var t = full(r, tModel, ScalarType.Float32, x.device);
            return (-model.Forward(x.to(dtype), h, w, t, rows).to(ScalarType.Float32)).MoveToOuterDisposeScope();
        }
        var t2 = full(2 * r, tModel, ScalarType.Float32, x.device);
        var both = model.Forward(cat([x, x], 0).to(dtype), h, w, t2, [.. rows, .. Enumerable.Repeat(negative!, (int)r)]).to(ScalarType.Float32);
        var pos = both[..(int)r];
        var neg = both[(int)r..];
        var pred = pos + guidance * (pos - neg);
        if (cfgNormalization > 0)
        {
            // Per sample: cap ||pred|| at cfg_normalization * ||pos||.
            var posNorm = pos.flatten(1).norm(1, keepdim: false);                       // [R]
            var predNorm = pred.flatten(1).norm(1, keepdim: false);                     // [R]
            var maxNorm = posNorm * cfgNormalization;
            var scale = where(predNorm > maxNorm, maxNorm / predNorm, ones_like(predNorm));
            pred = pred * scale.view(-1, 1, 1);
        }
        return (-pred).MoveToOuterDisposeScope();
    }

    public void KeepRows(Tensor keep)
    {
        var idx = keep.to(DeviceType.CPU).data<long>().ToArray();
        rows = [.. idx.Select(i => rows[(int)i])];
    }

    /// <summary>The caption tensors belong to the pipeline's scope (cached prompt features); nothing to free here.</summary>
    public void Dispose() { }
}
