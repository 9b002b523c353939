namespace InferenceServer.Models.Weights;

/// <summary>How a checkpoint's files are read into a model.</summary>
/// <param name="Mapping">Whether CPU weights may be memory maps of the files (<see cref="WeightMapping"/>).</param>
/// <param name="DropCopiedPages">
/// Drop a copied file's pages from the page cache when the load is done with it: set when the machine cannot keep the
/// files cached next to the loaded model (<see cref="PageCache.CanKeep"/>). They would be evicted anyway, by reclaim
/// work that stalls the next component's load (klein-4B here, 24 GB for 14 GB of weights and 16 GB of files: the text
/// encoder read at 0.6-0.8 GB/s after the transformer, 1.1-1.8 GB/s with the transformer's pages dropped).
/// </param>
public sealed record ReadOptions(WeightMapping Mapping = WeightMapping.Off, bool DropCopiedPages = false)
{
    /// <summary>Copies, pages left to the kernel.</summary>
    public static ReadOptions Default { get; } = new();
}
