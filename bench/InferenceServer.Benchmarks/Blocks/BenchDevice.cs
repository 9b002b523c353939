using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Runtime;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks.Blocks;

/// <summary>
/// What the block-level suites share: the device (environment variable <c>BENCH_DEVICE</c>: auto (default: CUDA when
/// libtorch has it and sees a GPU, else the CPU), cpu, cuda, cuda:N), the dtypes (<c>FLUX2_BENCH_DTYPES</c>, default
/// "bf16,fp32"), the model card whose widths are used (<c>FLUX2_BENCH_CARD</c>, default flux2-klein-4b) and the token
/// counts (<c>FLUX2_BENCH_TOKENS</c>: "image+text" pairs, default "256+512"; e.g. "256+512,4096+512,16384+512").
/// Every benchmark method ends with <see cref="Sync"/>, so on CUDA it measures the kernels, not their queueing.
/// </summary>
public static class BenchDevice
{
    static Device? device;

    /// <summary>The device chosen by BENCH_DEVICE (resolved once).</summary>
    public static Device Device => device ??= ComputeDevice.Resolve(Environment.GetEnvironmentVariable("BENCH_DEVICE") ?? "auto");

    /// <summary>Waits for the device (no-op on the CPU).</summary>
    public static void Sync() => ComputeDevice.Synchronize(Device);

    /// <summary>BFloat16 and Float32, or those named in FLUX2_BENCH_DTYPES (the 8-bit names there are for the Flux2Step suite only).</summary>
    public static IEnumerable<ScalarType> DTypes() =>
        (Environment.GetEnvironmentVariable("FLUX2_BENCH_DTYPES") ?? "bf16,fp32").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Where(n => n is not ("int8" or "fp8")).Select(n => n == "fp32" ? ScalarType.Float32 : n == "bf16" ? ScalarType.BFloat16 : throw new ArgumentException($"FLUX2_BENCH_DTYPES: unknown dtype '{n}' (bf16, fp32)"));

    /// <summary>The transformer config of FLUX2_BENCH_CARD.</summary>
    public static Flux2Config Config() => ModelCards.Load(Environment.GetEnvironmentVariable("FLUX2_BENCH_CARD") ?? "flux2-klein-4b").Transformer;

    /// <summary>(image, text) token counts from FLUX2_BENCH_TOKENS.</summary>
    public static IEnumerable<TokenCounts> Tokens() =>
        (Environment.GetEnvironmentVariable("FLUX2_BENCH_TOKENS") ?? "256+512").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(TokenCounts.Parse);

    /// <summary>A RoPE table for <paramref name="image"/> image tokens on a near-square grid after <paramref name="text"/> text tokens: [1, 1, Lt+Li, D/2, 2, 2] f32.</summary>
    public static Tensor Rope(Flux2Config c, int image, int text)
    {
        using var scope = NewDisposeScope();
        int w = (int)Math.Ceiling(Math.Sqrt(image));
        var i = arange(image, ScalarType.Int64);
        var imgIds = stack([zeros_like(i), i.div(w, RoundingMode.floor), i % w, zeros_like(i)], -1);               // [Li, 4] (t, h, w, l)
        var t = arange(text, ScalarType.Int64);
        var txtIds = stack([zeros_like(t), zeros_like(t), zeros_like(t), t], -1);             // [Lt, 4]
        var ids = cat([txtIds, imgIds], 0).unsqueeze(0).to(Device);                           // [1, Lt+Li, 4]
        return Flux2Math.RopeTable(ids, c.AxesDim, c.Theta).MoveToOuterDisposeScope();
    }
}

/// <summary>Image and text token counts of one benchmark case (printed as "256+512").</summary>
public readonly record struct TokenCounts(int Image, int Text)
{
    public static TokenCounts Parse(string s)
    {
        var p = s.Split('+');
        if (p.Length != 2 || !int.TryParse(p[0], out int i) || !int.TryParse(p[1], out int t) || i < 1 || t < 0)
            throw new ArgumentException($"FLUX2_BENCH_TOKENS: '{s}' is not IMAGE+TEXT (e.g. 256+512)");
        return new TokenCounts(i, t);
    }

    public override string ToString() => $"{Image}+{Text}";
}
