using InferenceServer.Models.Weights;
using System.Security.Cryptography;
using static TorchSharp.torch;

namespace InferenceServer.Models.Qwen3;

/// <summary>
/// Text encoders shared between the models of one process: FLUX.2 [klein] 4B and Z-Image-Turbo both use Qwen3-4B, so
/// when two folders' <c>text_encoder/</c> weights hash equal (SHA-256 over every safetensors file, in name order) and the
/// dtype and device agree, the second model gets the first one's encoder instead of another 8 GB copy. A shared encoder is
/// built with every layer, so each model reads its own hidden states from it (klein 9/18/27, Z-Image 35); it is disposed
/// when the last model that uses it is. Thread-safe.
/// </summary>
public sealed class SharedTextEncoders
{
    readonly object gate = new();
    readonly Dictionary<string, Entry> entries = new();

    sealed class Entry(Qwen3TextEncoder encoder, string firstUser)
    {
        public Qwen3TextEncoder Encoder { get; } = encoder;
        public string FirstUser { get; } = firstUser;
        public int Users;
    }

    /// <summary>
    /// The encoder of <paramref name="tePath"/>: loaded (all layers) on the first call for its weights, reused after.
    /// Dispose the returned lease instead of the encoder.
    /// </summary>
    /// <returns>The encoder, the lease, and the model it was first loaded for when it is reused (null when loaded now).</returns>
    public (Qwen3TextEncoder Encoder, IDisposable Lease, string? SharedWith) Acquire(string tePath, Qwen3Config config, ScalarType dtype, Device device, string user,
        ReadOptions? read = null)
    {
        string key = $"{ContentHash(tePath)}/{dtype}/{device}/{config.NumHiddenLayers}x{config.HiddenSize}";
        lock (gate)
        {
            string? sharedWith = null;
            if (entries.TryGetValue(key, out var entry)) sharedWith = entry.FirstUser;
            else entries[key] = entry = new Entry(Qwen3TextEncoder.Load(tePath, config, dtype, device, allLayers: true, read), user);
            entry.Users++;
            return (entry.Encoder, new Lease(this, key), sharedWith);
        }
    }

    /// <summary>
    /// A model folder's text encoder (<paramref name="tePath"/>, its config.json checked against <paramref name="config"/>):
    /// through <paramref name="shared"/> when given, else loaded for this model alone. Dispose <c>Lease</c> (the encoder
    /// itself when not shared); <c>Report</c> says how it was obtained.
    /// </summary>
    public static (Qwen3TextEncoder Encoder, IDisposable Lease, Qwen3Config Config, string Report) Load(SharedTextEncoders? shared, string tePath,
        Qwen3Config config, ScalarType dtype, Device device, string user, ReadOptions? read = null)
    {
        string hfConfig = Path.Combine(tePath, "config.json");
        if (File.Exists(hfConfig)) config = Qwen3Config.FromHfConfig(hfConfig, config);
        if (shared is null)
        {
            var alone = Qwen3TextEncoder.Load(tePath, config, dtype, device, read: read);
            return (alone, alone, config, $"{alone.Depth} layers built");
        }
        var (encoder, lease, with) = shared.Acquire(tePath, config, dtype, device, user, read);
        return (encoder, lease, config, with is null ? $"{encoder.Depth} layers built (shareable)" : $"the same weights as {with}: shared, not loaded again");
    }

    /// <summary>Models holding an encoder from this registry, per distinct encoder (for reports and tests).</summary>
    public IReadOnlyList<int> Users { get { lock (gate) return entries.Values.Select(e => e.Users).ToList(); } }

    void Release(string key)
    {
        lock (gate)
        {
            if (!entries.TryGetValue(key, out var entry) || --entry.Users > 0) return;
            entries.Remove(key);
            entry.Encoder.Dispose();
        }
    }

    /// <summary>SHA-256 over the safetensors files of a checkpoint folder (or one file), in name order.</summary>
    public static string ContentHash(string path)
    {
        var files = Directory.Exists(path) ? Directory.GetFiles(path, "*.safetensors").Order(StringComparer.Ordinal).ToArray() : [path];
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        foreach (var f in files)
        {
            using var s = new FileStream(f, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            int n;
            while ((n = s.Read(buffer, 0, buffer.Length)) > 0) sha.AppendData(buffer, 0, n);
        }
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    sealed class Lease(SharedTextEncoders owner, string key) : IDisposable
    {
        int disposed;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 0) owner.Release(key);
        }
    }
}
