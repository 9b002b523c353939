using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Runtime;

/// <summary>
/// Device selection and the few host/device transfers the pipeline makes. CPU behaviour is the identity: nothing is
/// pinned, copied or synchronised there, so CPU results are bit-identical with or without these helpers.
/// </summary>
public static class ComputeDevice
{
    /// <summary>The names <see cref="Resolve"/> accepts (plus <c>cuda:N</c>).</summary>
    public static readonly string[] Names = ["auto", "cpu", "cuda"];

    /// <summary>
    /// <c>cpu</c>; <c>cuda</c> / <c>cuda:N</c> (loads libtorch's CUDA backend; an <see cref="ArgumentException"/> saying how to
    /// provide one when there is none); <c>auto</c>: CUDA device 0 when libtorch's CUDA backend loads and sees a device, else the CPU.
    /// Initialises libtorch (<see cref="TorchRuntime.EnsureInitialized"/>) first.
    /// </summary>
    public static Device Resolve(string name)
    {
        TorchRuntime.EnsureInitialized();
        string n = name.Trim().ToLowerInvariant();
        if (n == "cpu") return CPU;
        if (n == "auto") return TorchRuntime.TryInitializeCuda() ? CUDA : CPU;
        if (n == "cuda" || n.StartsWith("cuda:", StringComparison.Ordinal))
        {
            try { TorchRuntime.InitializeCuda(); }
            catch (InvalidOperationException e) { throw new ArgumentException($"device '{name}': {e.Message}", e); } // the caller's choice, not a bug
            return new Device(n);
        }
        throw new ArgumentException($"device '{name}': expected auto, cpu, cuda or cuda:N");
    }

    /// <summary>True for a CUDA device.</summary>
    public static bool IsCuda(Device device) => device.type == DeviceType.CUDA;

    /// <summary>Waits for the work queued on <paramref name="device"/> (CUDA: its current stream); nothing on the CPU.</summary>
    public static void Synchronize(Device device)
    {
        if (IsCuda(device)) cuda.synchronize(device);
    }

    static readonly AsyncLocal<bool> timing = new();

    /// <summary>
    /// For benchmarks: while the returned scope is open (on this thread / async flow), <see cref="SyncForTiming"/> waits
    /// for the device, so wall-clock stage and step timings measure the work, not its queueing. Off by default: serving
    /// never waits on the device inside the step loop. No effect on the CPU.
    /// </summary>
    public static IDisposable SynchronizedTiming()
    {
        bool before = timing.Value;
        timing.Value = true;
        return new Restore(() => timing.Value = before);
    }

    /// <summary>True inside <see cref="SynchronizedTiming"/>.</summary>
    public static bool TimingSynchronized => timing.Value;

    /// <summary>Call where a timing is taken: synchronises <paramref name="device"/> inside <see cref="SynchronizedTiming"/>, does nothing otherwise.</summary>
    public static void SyncForTiming(Device device)
    {
        if (timing.Value) Synchronize(device);
    }

    sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }

    /// <summary>
    /// <paramref name="host"/> on <paramref name="device"/> in <paramref name="dtype"/> (default: its own). A CPU tensor bound
    /// for CUDA is staged through page-locked memory and copied with <c>non_blocking</c>, so the host does not wait
    /// for the copy (PyTorch's pinned-memory allocator keeps the staging block until the copy's event completes, so
    /// disposing it here is safe). Anything else is a plain <c>to</c> (an alias when nothing changes).
    /// </summary>
    public static Tensor Upload(Tensor host, Device device, ScalarType? dtype = null)
    {
        var dt = dtype ?? host.dtype;
        if (!IsCuda(device) || host.device_type != DeviceType.CPU) return host.to(dt, device);
        using var scope = NewDisposeScope();
        var staged = host.dtype == dt ? host.contiguous() : host.to(dt).contiguous(); // cast on the host: fewer bytes to pin when narrowing
        var pinned = staged.is_pinned() ? staged : staged.pin_memory();
        return pinned.to(device, non_blocking: true).MoveToOuterDisposeScope();
    }
}
