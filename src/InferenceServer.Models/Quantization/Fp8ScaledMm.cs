using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Quantization;

/// <summary>
/// FP8 matmul through <c>torch._scaled_mm</c>, which TorchSharp does not bind: the TorchScript source
/// <c>kernels/fp8_scaled_mm.py</c> (copied next to the binaries) is compiled once with <c>torch.jit.compile</c>.
/// It is used only on CUDA devices where a probe product succeeds (FP8 tensor cores: compute capability 8.9+);
/// on the CPU, or when compiling or probing fails, <see cref="QuantizedLinear"/> dequantizes per layer instead and
/// <see cref="Status"/> says why.
/// </summary>
public static class Fp8ScaledMm
{
    /// <summary>The kernel file, relative to the application folder.</summary>
    public const string KernelFile = "kernels/fp8_scaled_mm.py";

    static readonly Lazy<(jit.CompilationUnit? Unit, string Status)> compiled = new(Compile, LazyThreadSafetyMode.ExecutionAndPublication);
    static readonly ConcurrentDictionary<string, bool> usable = new();

    /// <summary>
    /// Off switch (A/B measurements, or a libtorch whose TorchScript rejects the source: a compile error ends the process
    /// in TorchSharp 0.107); the per-layer dequantization path is used while false. Default: true unless the
    /// environment variable <c>INFERENCE_SERVER_FP8_KERNEL</c> is <c>0</c>.
    /// </summary>
    public static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("INFERENCE_SERVER_FP8_KERNEL") != "0";

    /// <summary>Whether the kernel compiled, or why not.</summary>
    public static string Status => compiled.Value.Status;

    /// <summary>True when the TorchScript source compiled.</summary>
    public static bool IsCompiled => compiled.Value.Unit is not null;

    /// <summary>Path of the kernel source next to the binaries.</summary>
    public static string KernelPath => Path.Combine(AppContext.BaseDirectory, KernelFile);

    /// <summary>
    /// True when FP8 matmuls run through the kernel on <paramref name="device"/>: CUDA only, kernel compiled, and a
    /// probe product on that device succeeded (checked once per device).
    /// </summary>
    public static bool IsUsable(Device device)
    {
        if (!Enabled || (device.type != DeviceType.CUDA && !(AllowCpu && device.type == DeviceType.CPU))) return false;
        return usable.GetOrAdd(device.ToString(), _ => Probe(device));
    }

    /// <summary>Runs the probe product on <paramref name="device"/> (any device); false when it throws or is wrong.</summary>
    public static bool Probe(Device device)
    {
        var unit = compiled.Value.Unit;
        if (unit is null) return false;
        try
        {
            using var scope = NewDisposeScope();
            var like = zeros(1, device: device);
            return unit.invoke<Tensor>("fp8_available", like).item<bool>();
        }
        catch (Exception e) // any failure means "not here": the fallback is exact
        {
            LastProbeError = $"{device}: {e.Message.Split('\n')[0]}";
            return false;
        }
    }

    /// <summary>Why the last failed probe failed (for the log), or null.</summary>
    public static string? LastProbeError { get; private set; }

    /// <summary>libtorch's float8_e4m3fn type number (TorchSharp 0.107 has no name for it).</summary>
    public const ScalarType Float8E4M3 = (ScalarType)24;

    /// <summary>When true, the CPU counts as usable where the probe succeeds (tests: libtorch 2.10 has a CPU _scaled_mm).</summary>
    public static bool AllowCpu { get; set; }

    /// <summary>A float8_e4m3fn tensor holding <paramref name="exactValues"/> (values that are E4M3 numbers, e.g. decoded codes).</summary>
    public static Tensor ToFloat8(Tensor exactValues) => Unit.invoke<Tensor>("fp8_weight", exactValues);

    /// <summary><c>x (W s)^T</c> for a float8_e4m3fn weight [N, K] (see <see cref="ToFloat8"/>) with a per-tensor float32 scale; x is [..., K].</summary>
    public static Tensor Linear(Tensor x, Tensor weightFp8, Tensor scale) => Unit.invoke<Tensor>("fp8_linear", x, weightFp8, scale);

    static jit.CompilationUnit Unit => compiled.Value.Unit ?? throw new InvalidOperationException($"the FP8 kernel is not available: {Status}");

    static (jit.CompilationUnit?, string) Compile()
    {
        string path = KernelPath;
        if (!File.Exists(path)) return (null, $"{path} not found");
        try { return (jit.compile(File.ReadAllText(path)), $"compiled {KernelFile}"); }
        catch (Exception e) { return (null, $"{KernelFile} did not compile: {e.Message.Split('\n')[0]}"); }
    }
}
