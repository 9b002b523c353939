using System.Runtime;
using System.Runtime.InteropServices;
using InferenceServer.Server.Hosting;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Engine;

/// <summary>
/// Gives memory back to the OS once the server has been quiet for <see cref="Delay"/> (no batch running, no request
/// answered; the engine and the front ends report both): a compacting, decommitting GC
/// (<see cref="GCCollectionMode.Aggressive"/>) and glibc's <c>malloc_trim</c>. Without it the process keeps the high-water
/// mark of every burst: libtorch's freed CPU tensors stay in malloc's arenas (glibc raises its mmap threshold after
/// large frees) and refused requests' garbage waits for a GC that an idle server never runs; the reliability fuzz saw RSS
/// go 376 -> 1357 MB and stay. Runs on a timer thread, never on the engine's; work that arrives meanwhile runs beside it.
/// </summary>
public sealed class IdleMemoryRelease : IDisposable
{
    readonly Timer timer;
    int busy;

    public IdleMemoryRelease(IOptions<ServerOptions> options) : this(options.Value.Queue.ReleaseMemoryAfterIdle) { }

    public IdleMemoryRelease(TimeSpan delay)
    {
        Delay = delay;
        timer = new Timer(_ => Release(), null, Timeout.Infinite, Timeout.Infinite);
    }

    public TimeSpan Delay { get; }
    /// <summary>Times memory was released (tests wait for it).</summary>
    public long Releases => Interlocked.Read(ref releases);
    long releases;
    /// <summary>Raised after each release.</summary>
    public event Action? Released;

    /// <summary>The engine starts work: a pending release is called off.</summary>
    public void Busy()
    {
        Volatile.Write(ref busy, 1);
        timer.Change(Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>The engine has nothing to do: release after <see cref="Delay"/> unless work comes first.</summary>
    public void Idle()
    {
        Volatile.Write(ref busy, 0);
        Rearm();
    }

    /// <summary>A front end answered a request (refused ones included): release <see cref="Delay"/> after the last one.</summary>
    public void RequestEnded()
    {
        if (Volatile.Read(ref busy) == 0) Rearm();
    }

    void Rearm()
    {
        if (Delay >= TimeSpan.Zero) timer.Change(Delay, Timeout.InfiniteTimeSpan);
    }

    void Release()
    {
        if (Volatile.Read(ref busy) == 1) return;
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        if (OperatingSystem.IsLinux())
        {
            try { MallocTrim(0); }
            catch (EntryPointNotFoundException) { }   // not glibc (musl): nothing to trim this way
            catch (DllNotFoundException) { }
        }
        Interlocked.Increment(ref releases);
        Released?.Invoke();
    }

    [DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    public void Dispose() => timer.Dispose();
}
