namespace InferenceServer.Models.Weights;

/// <summary>How one component of a model folder loaded (see <see cref="LoadMeter"/>).</summary>
/// <param name="Component">transformer, vae, text encoder, tokenizer.</param>
/// <param name="Path">The file or folder it was read from.</param>
/// <param name="Tensors">Tensors copied into the module.</param>
/// <param name="Bytes">Checkpoint bytes read for them.</param>
/// <param name="Build">Building the module (on the meta device: no memory, no initialisation).</param>
/// <param name="Read">Reading tensors into the module's storage (converting where the dtype differs), or mapping them, summed over the reading threads.</param>
/// <param name="Check">The finite-value check of the loaded weights, summed over the reading threads.</param>
/// <param name="Total">Wall time of the whole component.</param>
/// <param name="RssBytes">The process's resident memory when it was done.</param>
/// <param name="PeakRssBytes">The process's peak resident memory so far.</param>
public sealed record ComponentLoad(string Component, string Path, int Tensors, long Bytes, TimeSpan Build, TimeSpan Read, TimeSpan Check,
    TimeSpan Total, long RssBytes, long PeakRssBytes)
{
    /// <summary>Of <see cref="Bytes"/>, those left in memory maps of the files instead of copied (<see cref="WeightMapping"/>).</summary>
    public long MappedBytes { get; init; }

    /// <summary>Checkpoint bytes per second of wall time.</summary>
    public double BytesPerSecond => Total.TotalSeconds > 0 ? Bytes / Total.TotalSeconds : 0;

    public override string ToString() =>
        $"{Bytes / 1e9:F2} GB{(MappedBytes > 0 ? $" ({MappedBytes / 1e9:F2} GB memory-mapped)" : "")} in {Total.TotalSeconds:F1} s ({BytesPerSecond / 1e9:F2} GB/s; build {Build.TotalSeconds:F2} s, read {Read.TotalSeconds:F1} s, check {Check.TotalSeconds:F1} s; RSS {RssBytes / 1e9:F1} GB)";
}

/// <summary>A load under way: the component being read and its bytes so far.</summary>
public readonly record struct LoadProgress(string Component, long BytesDone, long BytesTotal)
{
    public double Fraction => BytesTotal > 0 ? Math.Min(1, (double)BytesDone / BytesTotal) : 1;
}
