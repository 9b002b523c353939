using System.Security.Cryptography;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;

namespace InferenceServer.Server.Http;

/// <summary>
/// Images of <c>response_format=url</c> responses, in memory, served from <c>GET /v1/images/files/{id}</c>. Ids are 128
/// random bits (unguessable; the url is the capability). Each image expires after <see cref="FileStoreOptions.Expiry"/>;
/// the total is bounded by <see cref="FileStoreOptions.MaxBytes"/>, the oldest images dropped first. Thread-safe.
/// </summary>
public sealed class ImageFileStore(FileStoreOptions options, TimeProvider? time = null)
{
    sealed record Entry(string Id, byte[] Bytes, string ContentType, DateTimeOffset Expires);

    readonly TimeProvider time = time ?? TimeProvider.System;
    readonly Dictionary<string, Entry> entries = new(StringComparer.Ordinal);
    readonly Queue<Entry> byAge = new();   // insertion order = expiry order (one expiry for all)
    readonly object gate = new();
    long bytes;

    public long Bytes { get { lock (gate) return bytes; } }
    public int Count { get { lock (gate) return entries.Count; } }

    /// <summary>Keeps <paramref name="data"/> and returns its id; the oldest images go when the byte budget is exceeded.</summary>
    public string Add(byte[] data, string contentType)
    {
        if (data.LongLength > options.MaxBytes)
            throw new ServiceException(ErrorKind.TooLarge,
                $"the image ({data.LongLength:N0} bytes) is larger than the url store ({options.MaxBytes:N0} bytes); use response_format=b64_json", "response_format");
        string id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
        var now = time.GetUtcNow();
        lock (gate)
        {
            DropExpired(now);
            while (bytes + data.LongLength > options.MaxBytes && byAge.TryDequeue(out var oldest)) Remove(oldest);
            var entry = new Entry(id, data, contentType, now + options.Expiry);
            entries[id] = entry;
            byAge.Enqueue(entry);
            bytes += data.LongLength;
        }
        return id;
    }

    /// <summary>The image, or false when unknown or expired.</summary>
    public bool TryGet(string id, out byte[] data, out string contentType)
    {
        lock (gate)
        {
            DropExpired(time.GetUtcNow());
            if (entries.TryGetValue(id, out var e))
            {
                (data, contentType) = (e.Bytes, e.ContentType);
                return true;
            }
        }
        (data, contentType) = ([], "");
        return false;
    }

    void DropExpired(DateTimeOffset now)
    {
        while (byAge.TryPeek(out var oldest) && (oldest.Expires <= now || !entries.ContainsKey(oldest.Id)))
            Remove(byAge.Dequeue());
    }

    void Remove(Entry e)
    {
        if (entries.Remove(e.Id)) bytes -= e.Bytes.LongLength;
    }
}
