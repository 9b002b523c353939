using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>The FLUX.2 flow-matching schedule (BFL <c>sampling.py</c>): empirical mu, time shift, timesteps.</summary>
public static class FlowSchedule
{
    /// <summary>
    /// BFL <c>compute_empirical_mu</c>: a line in image_seq_len interpolated over num_steps between fits at 10 and
    /// 200 steps; above 4300 tokens the 200-step fit is used whatever num_steps is (the reference's jump at
    /// 4300 -> 4301 is reproduced on purpose).
    /// </summary>
    public static double ComputeEmpiricalMu(int imageSeqLen, int numSteps)
    {
        const double a1 = 8.73809524e-05, b1 = 1.89833333, a2 = 0.00016927, b2 = 0.45666666;
        if (imageSeqLen > 4300) return a2 * imageSeqLen + b2;
        double m200 = a2 * imageSeqLen + b2, m10 = a1 * imageSeqLen + b1;
        double a = (m200 - m10) / 190.0, b = m200 - 200.0 * a;
        return a * numSteps + b;
    }

    /// <summary>
    /// BFL <c>generalized_time_snr_shift</c> on a float32 tensor, with PyTorch's op order for scalar / tensor
    /// (<c>reciprocal() * scalar</c>): <c>exp(mu) / (exp(mu) + (1/t - 1)^sigma)</c>; t = 0 maps to 0, t = 1 to 1.
    /// </summary>
    public static Tensor TimeShift(Tensor t, double mu, double sigma)
    {
        using var s = NewDisposeScope();
        double e = Math.Exp(mu);
        var r = (t.reciprocal() * 1.0 - 1).pow(sigma);
        return ((r + e).reciprocal() * e).MoveToOuterDisposeScope();
    }

    /// <summary>BFL <c>get_schedule</c>: num_steps + 1 float32 timesteps from 1 to 0, shifted by the image token count.</summary>
    /// <param name="numSteps">Sampling steps (at least 1).</param>
    /// <param name="imageSeqLen">Image tokens of the generated image only (not reference tokens).</param>
    public static float[] GetSchedule(int numSteps, int imageSeqLen)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(numSteps, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(imageSeqLen, 1);
        using var s = NewDisposeScope();
        var t = linspace(1, 0, numSteps + 1, ScalarType.Float32);
        return TimeShift(t, ComputeEmpiricalMu(imageSeqLen, numSteps), 1.0).data<float>().ToArray();
    }
}
