namespace InferenceServer.Pipeline.ZImage;

/// <summary>
/// The Z-Image(-Turbo) flow-matching schedule: <c>FlowMatchEulerDiscreteScheduler.set_timesteps</c> as the official
/// <c>generate()</c> calls it (<c>sigma_min = 0</c>, <c>use_dynamic_shifting = False</c>). The shift is STATIC: unlike
/// FLUX.2's, the schedule does not depend on the resolution (<c>mu</c> is computed by the reference and then ignored).
/// Turbo uses shift 3 and 8 steps, the base model shift 6.
/// </summary>
public static class ZImageSchedule
{
    /// <summary>Z-Image-Turbo's <c>scheduler_config.json</c> shift.</summary>
    public const double TurboShift = 3.0;

    /// <summary>Z-Image (base)'s shift.</summary>
    public const double BaseShift = 6.0;

    /// <summary>The reference's <c>num_train_timesteps</c>: the scale between sigma and the scheduler's timestep.</summary>
    const float TrainTimesteps = 1000f;

    /// <summary>
    /// <paramref name="steps"/> + 1 float32 sigmas from 1 down to 0. Computed like the reference, so the values are
    /// bit-identical: <c>s = np.linspace(1000, 0, N+1)[:-1] / 1000</c> and <c>shift*s / (1 + (shift-1)*s)</c> in
    /// float64 (numpy), then one cast to float32, then a final 0.
    /// </summary>
    public static float[] Sigmas(int steps, double shift)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        if (!(shift > 0) || double.IsInfinity(shift)) throw new ArgumentOutOfRangeException(nameof(shift), shift, "shift must be a positive finite number");
        var sigmas = new float[steps + 1];
        // numpy linspace without the endpoint it replaces: y[i] = i * step + start, step = (stop - start) / (num - 1).
        double step = -1000.0 / steps;
        for (int i = 0; i < steps; i++)
        {
            double s = (i * step + 1000.0) / 1000.0;
            sigmas[i] = (float)(shift * s / (1 + (shift - 1) * s));
        }
        sigmas[steps] = 0f;
        return sigmas;
    }

    /// <summary>The scheduler's timestep of a sigma: <c>sigma * 1000</c> in float32 (the reference's <c>timesteps</c>).</summary>
    public static float Timestep(float sigma) => sigma * TrainTimesteps;

    /// <summary>
    /// The time the transformer sees for a step at <paramref name="sigma"/>: <c>(1000 - t) / 1000</c> with
    /// <c>t = sigma * 1000</c>, each op in float32 as the reference's tensor maths does it (equal to <c>1 - sigma</c>
    /// only up to rounding). Reversed w.r.t. sigma: 0 is pure noise, 1 clean.
    /// </summary>
    public static float ModelTime(float sigma) => (TrainTimesteps - Timestep(sigma)) / TrainTimesteps;
}
