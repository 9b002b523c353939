using System.Diagnostics;
using InferenceServer.Models.Runtime;

namespace InferenceServer.Models.Weights;

/// <summary>
/// Measures a model load, component by component (<see cref="ComponentLoad"/>), and reports its progress as tensors are
/// read. A folder loader opens one <see cref="Begin"/> scope per component; <see cref="StateDict.Load"/> finds the open
/// scope of its thread (<see cref="Current"/>) and reports into it, so no loader signature carries the meter.
/// </summary>
public sealed class LoadMeter(Action<LoadProgress>? progress = null)
{
    readonly Action<LoadProgress>? progress = progress;
    readonly List<ComponentLoad> components = [];
    [ThreadStatic] static Scope? current;

    /// <summary>The components measured so far, in load order.</summary>
    public IReadOnlyList<ComponentLoad> Components { get { lock (components) return components.ToList(); } }

    /// <summary>The scope open on this thread, if any.</summary>
    public static Scope? Current => current;

    /// <summary>Starts measuring <paramref name="component"/>; disposing the scope records it.</summary>
    public Scope Begin(string component, string path) => new(this, component, path);

    /// <summary>Runs <paramref name="load"/> inside a scope of <paramref name="meter"/>, or just runs it without one.</summary>
    public static T Measure<T>(LoadMeter? meter, string component, string path, Func<T> load)
    {
        if (meter is null) return load();
        using var scope = meter.Begin(component, path);
        return load();
    }

    /// <summary>Builds a module, timed as the build of <paramref name="scope"/> when there is one.</summary>
    public static T Build<T>(Scope? scope, Func<T> build) => scope is null ? build() : scope.Build(build);

    /// <summary>"; 7.20 GB in 3.1 s (...)" for the component <paramref name="meter"/> recorded last, or "" without a meter: for load report lines.</summary>
    public static string LastTiming(LoadMeter? meter) => meter?.Components.LastOrDefault() is { } c ? $"; {c}" : "";

    /// <summary>One component being measured. Thread-safe: the reading threads report into it.</summary>
    public sealed class Scope : IDisposable
    {
        readonly LoadMeter owner;
        readonly Scope? outer;
        readonly Stopwatch wall = Stopwatch.StartNew();
        readonly string component, path;
        long buildTicks, readTicks, checkTicks, bytesDone, bytesPlanned, bytesMapped;
        int tensors, disposed;

        internal Scope(LoadMeter owner, string component, string path)
        {
            this.owner = owner;
            this.component = component;
            this.path = path;
            outer = current;
            current = this;
        }

        /// <summary>Builds the module, timed as the component's build.</summary>
        public T Build<T>(Func<T> build)
        {
            long start = Stopwatch.GetTimestamp();
            try { return build(); }
            finally { Interlocked.Add(ref buildTicks, Stopwatch.GetTimestamp() - start); }
        }

        /// <summary>Announces bytes about to be read (the progress total).</summary>
        internal void Plan(long bytes)
        {
            long total = Interlocked.Add(ref bytesPlanned, bytes);
            owner.progress?.Invoke(new LoadProgress(component, Interlocked.Read(ref bytesDone), total));
        }

        /// <summary>One tensor read (and converted), or mapped, in <paramref name="ticks"/> stopwatch ticks.</summary>
        internal void Read(long bytes, long ticks, bool mapped = false)
        {
            if (mapped) Interlocked.Add(ref bytesMapped, bytes);
            Interlocked.Add(ref readTicks, ticks);
            Interlocked.Increment(ref tensors);
            long done = Interlocked.Add(ref bytesDone, bytes);
            owner.progress?.Invoke(new LoadProgress(component, done, Interlocked.Read(ref bytesPlanned)));
        }

        internal void Checked(long ticks) => Interlocked.Add(ref checkTicks, ticks);

        public void Dispose()
        {
            if (Interlocked.Exchange(ref disposed, 1) != 0) return;
            current = outer;
            static TimeSpan Span(long ticks) => TimeSpan.FromSeconds(ticks / (double)Stopwatch.Frequency);
            var load = new ComponentLoad(component, path, tensors, Interlocked.Read(ref bytesDone), Span(buildTicks), Span(readTicks),
                Span(checkTicks), wall.Elapsed, ProcessMemory.Rss, ProcessMemory.Peak) { MappedBytes = Interlocked.Read(ref bytesMapped) };
            lock (owner.components) owner.components.Add(load);
        }
    }
}
