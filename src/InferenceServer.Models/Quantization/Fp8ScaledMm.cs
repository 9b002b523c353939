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

    /// <summary>Off switch (e.g. for A/B measurements); the per-layer dequantization path is used while false.</summary>
    public static bool Enabled { get; set; } = true;

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
        if (!Enabled || device.type != DeviceType.CUDA) return false;
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
            return unit.invoke<bool>("fp8_available", device);
        }
        catch (Exception) { return false; } // any failure means "not here": the fallback is exact
    }

    /// <summary><c>x W^T</c> for E4M3 codes [N, K] with a per-tensor float32 scale; x is [..., K].</summary>
    public static Tensor Linear(Tensor x, Tensor codes, Tensor scale)
    {
        var unit = compiled.Value.Unit ?? throw new InvalidOperationException($"the FP8 kernel is not available: {Status}");
        return unit.invoke<Tensor>("fp8_linear", x, codes, scale);
    }

    static (jit.CompilationUnit?, string) Compile()
    {
        string path = KernelPath;
        if (!File.Exists(path)) return (null, $"{path} not found");
        try { return (jit.compile(File.ReadAllText(path)), $"compiled {KernelFile}"); }
        catch (Exception e) { return (null, $"{KernelFile} did not compile: {e.Message.Split('\n')[0]}"); }
    }
}
