using System.Diagnostics;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Models.Lora;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Observability;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Lora;

/// <summary>
/// The adapters of the folder (<see cref="LoraOptions.Directory"/>) as requests use them. An adapter is loaded once per
/// served model (its deltas live in that model's dtype and device), on a pool thread, never the engine's; requests that
/// want it meanwhile wait for the same load. Loaded adapters stay for later requests in one LRU under
/// <see cref="LoraOptions.CacheBytes"/> (all models together). A request holds its adapters (a <see cref="LoraLease"/>)
/// from before it is queued until its job ended, whatever the outcome; a held adapter is never disposed, so the budget is
/// enforced over the adapters nobody holds, when a load completes and when a lease is released. A file that changed on
/// disk (size or time) is loaded again; the old copy goes once its holders are done.
/// </summary>
public sealed class LoraLibrary : IDisposable
{
    readonly LoraOptions options;
    readonly ServerMetrics metrics;
    readonly ILogger log;
    readonly Lock gate = new();
    readonly Dictionary<(ServedModel Model, string Name), Entry> cached = [];
    readonly HashSet<Entry> alive = [];    // every entry whose adapter may still need disposing (cached or held)
    long bytes, clock;
    bool disposed;

    public LoraLibrary(IOptions<ServerOptions> options, ServerMetrics metrics, ILogger<LoraLibrary> log)
    {
        this.options = options.Value.Lora;
        this.metrics = metrics;
        this.log = log;
    }

    public string? Directory => options.Directory;

    /// <summary>Bytes of the adapters in memory (cached or held by requests).</summary>
    public long LoadedBytes { get { lock (gate) return bytes; } }

    /// <summary>
    /// Resolves and loads <paramref name="requested"/> for <paramref name="model"/>: INVALID_ARGUMENT naming <c>loras</c> for
    /// too many adapters, a name that is not a plain file name or an unknown name (all checked before anything loads), or a
    /// file the loader refuses (its message). Dispose the lease when the job has ended.
    /// </summary>
    public async Task<LoraLease> AcquireAsync(ServedModel model, IReadOnlyList<RequestedLora> requested, CancellationToken cancellationToken)
    {
        if (requested.Count == 0) return LoraLease.None;
        var files = Check(model, requested);
        var lease = new LoraLease(this);
        try
        {
            for (int i = 0; i < files.Count; i++) lease.Hold(Reserve(model, files[i].Name, files[i].Path, i));
            var uses = new List<LoraUse>(files.Count);
            for (int i = 0; i < files.Count; i++)
            {
                try { uses.Add(new LoraUse(await lease.Entries[i].Loading.WaitAsync(cancellationToken).ConfigureAwait(false), requested[i].Scale)); }
                catch (InvalidDataException e)
                {
                    // The loader names the file by its path; clients see only the adapter's file name.
                    string message = e.Message.Replace(files[i].Path, Path.GetFileName(files[i].Path), StringComparison.Ordinal);
                    throw ServiceException.Invalid("loras", $"loras[{i}].name: {message}");
                }
            }
            lease.Uses = uses;
            return lease;
        }
        catch
        {
            lease.Dispose();
            throw;
        }
    }

    /// <summary>The adapters' files, after the count and name checks of <see cref="AcquireAsync"/> (nothing is loaded).</summary>
    public IReadOnlyList<(string Name, string Path)> Check(ServedModel model, IReadOnlyList<RequestedLora> requested)
    {
        int max = model.Pipeline.Options.MaxLorasPerRequest;
        if (requested.Count > max)
            throw ServiceException.Invalid("loras", $"loras: {requested.Count} adapters given, at most {max} are allowed");
        return requested.Select((r, i) => Locate(r.Name, i)).ToList();
    }

    /// <summary>The folder's adapters, each with what is loaded of it per model.</summary>
    public LoraListing List()
    {
        var files = LoraFolder.List(options.Directory);
        lock (gate)
        {
            var loaded = cached.Values.Where(e => e.Adapter is not null)
                .GroupBy(e => e.Name, StringComparer.Ordinal)
                .ToDictionary(g => g.Key, g => g.OrderBy(e => e.Model.Name, StringComparer.Ordinal).Select(e => e.Report!).ToList(), StringComparer.Ordinal);
            var adapters = files.Select(f => new LoraListEntry(f.Name, f.Bytes, loaded.TryGetValue(f.Name, out var l) ? l : [])).ToList();
            return new LoraListing(adapters, bytes, options.CacheBytes, options.MaxPerRequest);
        }
    }

    (string Name, string Path) Locate(string name, int index)
    {
        string field = $"loras[{index}].name";
        if (string.IsNullOrWhiteSpace(name)) throw ServiceException.Invalid("loras", $"{field}: an adapter name is required");
        if (name.EndsWith(LoraSpec.Extension, StringComparison.Ordinal)) name = name[..^LoraSpec.Extension.Length];
        if (!LoraFolder.IsPlainName(name))
            throw ServiceException.Invalid("loras", $"{field}: {ClientText.Quote(name)} is not an adapter name (a file name in the adapter folder, without {LoraSpec.Extension})");
        if (options.Directory is null)
            throw ServiceException.Invalid("loras", $"{field}: unknown adapter {ClientText.Quote(name)} (this server has no adapter folder)");
        return (name, LoraFolder.PathOf(options.Directory, name) ?? throw ServiceException.Invalid("loras", $"{field}: unknown adapter {ClientText.Quote(name)}"));
    }

    /// <summary>The cached entry of (model, name) for the file as it is now, or a new one whose load starts now; held once more.</summary>
    Entry Reserve(ServedModel model, string name, string path, int index)
    {
        (long, DateTime) stamp;
        try
        {
            var info = new FileInfo(path);
            stamp = (info.Length, info.LastWriteTimeUtc);
        }
        catch (IOException) { throw ServiceException.Invalid("loras", $"loras[{index}].name: unknown adapter {ClientText.Quote(name)} (its file just went away)"); }
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (cached.TryGetValue((model, name), out var entry) && entry.Stamp != stamp)
            {
                log.LogInformation("adapter {Name} changed on disk: loading it again for {Model}", name, model.Name);
                Uncache(entry);
                entry = null;
            }
            if (entry is null)
            {
                entry = new Entry(model, name, stamp);
                cached[(model, name)] = entry;
                alive.Add(entry);
                // A pool thread: reading and resolving a file never runs on a request's thread or the engine's.
                entry.Loading = Task.Run(() => Load(entry, path));
            }
            entry.Refs++;
            return entry;
        }
    }

    LoraAdapter Load(Entry entry, string path)
    {
        var sw = Stopwatch.StartNew();
        LoraAdapter adapter;
        try { adapter = entry.Model.Pipeline.LoadAdapter(path, entry.Name); }
        catch (Exception e)
        {
            metrics.LoraLoad(ok: false, sw.Elapsed.TotalSeconds);
            log.LogWarning("adapter {Name} refused for {Model}: {Message}", entry.Name, entry.Model.Name, e.Message);
            lock (gate)
            {
                entry.Done = true;
                Uncache(entry);
            }
            throw;
        }
        metrics.LoraLoad(ok: true, sw.Elapsed.TotalSeconds);
        log.LogInformation("adapter loaded for {Model} in {Ms:0} ms: {Report}", entry.Model.Name, sw.Elapsed.TotalMilliseconds, adapter);
        lock (gate)
        {
            if (disposed)
            {
                adapter.Dispose();
                throw new ObjectDisposedException(nameof(LoraLibrary), "the server is shutting down");
            }
            entry.Done = true;
            entry.Adapter = adapter;
            entry.Report = new LoadedLoraReport(entry.Model.Name, adapter.Format, adapter.Modules, adapter.Ranks, adapter.Alphas, adapter.Targets, adapter.Bytes, adapter.ToString());
            entry.LastUsed = ++clock;
            bytes += adapter.Bytes;
            metrics.LoraCacheBytes(bytes);
            Settle(entry);
            Evict();
        }
        return adapter;
    }

    internal void Release(Entry entry)
    {
        lock (gate)
        {
            entry.Refs--;
            entry.LastUsed = ++clock;
            Settle(entry);
            Evict();
        }
    }

    /// <summary>Under the lock: drops the least recently used adapters nobody holds until the loaded bytes fit the budget.</summary>
    void Evict()
    {
        while (bytes > options.CacheBytes)
        {
            var victim = cached.Values.Where(e => e.Refs == 0 && e.Adapter is not null).MinBy(e => e.LastUsed);
            if (victim is null) return;     // the rest is held by queued or running requests: evicted once released
            log.LogInformation("adapter {Name} evicted for {Model} ({Bytes:N0} bytes; {Loaded:N0} of {Budget:N0} bytes loaded)",
                victim.Name, victim.Model.Name, victim.Adapter!.Bytes, bytes, options.CacheBytes);
            metrics.LoraEvicted();
            Uncache(victim);
        }
    }

    /// <summary>Under the lock: out of the cache (later requests load the file again); disposed once nobody holds it.</summary>
    void Uncache(Entry entry)
    {
        if (cached.TryGetValue((entry.Model, entry.Name), out var current) && current == entry) cached.Remove((entry.Model, entry.Name));
        entry.Cached = false;
        Settle(entry);
    }

    /// <summary>Under the lock: disposes an entry that is out of the cache and held by no request.</summary>
    void Settle(Entry entry)
    {
        if (entry.Cached || entry.Refs > 0 || !entry.Done || !alive.Remove(entry)) return;   // still loading: Load settles it when done
        if (entry.Adapter is { } adapter)
        {
            bytes -= adapter.Bytes;
            adapter.Dispose();
            metrics.LoraCacheBytes(bytes);
        }
    }

    /// <summary>After the engine stopped: every adapter still loaded is disposed.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            foreach (var e in alive) e.Adapter?.Dispose();
            alive.Clear();
            cached.Clear();
            bytes = 0;
        }
    }

    /// <summary>One adapter file loaded (or loading) for one model, and how many requests hold it.</summary>
    internal sealed class Entry(ServedModel model, string name, (long Length, DateTime Time) stamp)
    {
        public ServedModel Model { get; } = model;
        public string Name { get; } = name;
        public (long Length, DateTime Time) Stamp { get; } = stamp;
        public Task<LoraAdapter> Loading { get; set; } = null!;
        public LoraAdapter? Adapter { get; set; }
        public LoadedLoraReport? Report { get; set; }
        public int Refs { get; set; }
        public long LastUsed { get; set; }
        public bool Cached { get; set; } = true;
        /// <summary>The load ended (loaded or refused).</summary>
        public bool Done { get; set; }
    }
}
