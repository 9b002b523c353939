using InferenceServer.Models.Lora;

namespace InferenceServer.Server.Lora;

/// <summary>
/// The adapters one request holds, as <see cref="LoraUse"/>s for its <c>GenerationRequest.Loras</c>. Disposing it (once
/// the job ended, whatever the outcome) lets the library evict them again.
/// </summary>
public sealed class LoraLease : IDisposable
{
    public static readonly LoraLease None = new(null);

    readonly LoraLibrary? library;
    readonly List<LoraLibrary.Entry> entries = [];
    int released;

    internal LoraLease(LoraLibrary? library) => this.library = library;

    public IReadOnlyList<LoraUse> Uses { get; internal set; } = [];
    internal IReadOnlyList<LoraLibrary.Entry> Entries => entries;

    internal void Hold(LoraLibrary.Entry entry) => entries.Add(entry);

    public void Dispose()
    {
        if (library is null || Interlocked.Exchange(ref released, 1) == 1) return;
        foreach (var e in entries) library.Release(e);
    }
}
