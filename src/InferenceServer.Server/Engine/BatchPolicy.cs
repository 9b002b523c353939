using InferenceServer.Pipeline.Generation;

namespace InferenceServer.Server.Engine;

/// <summary>What the batching policy needs to know of a queued request.</summary>
/// <param name="Model">Which served model runs it (requests of different models never share a batch).</param>
/// <param name="Key">Requests with equal keys can share one DiT call per step.</param>
/// <param name="Images">Rows it adds to the batch.</param>
/// <param name="Tokens">Image tokens it adds (rows x tokens per image): the memory budget's unit.</param>
public readonly record struct BatchCandidate(object Model, BatchKey Key, int Images, long Tokens);

/// <summary>
/// The pure batching rule of the engine: the oldest queued request, plus every later one (in queue order) with the same
/// model and batch key that still fits the image and token budgets. No locks, no clocks: the scheduler calls it under its
/// lock with the queue's current order.
/// </summary>
public sealed record BatchPolicy(int MaxImages, long MaxTokens)
{
    /// <summary>Indices (into <paramref name="queued"/>, oldest first) of the next batch; empty when nothing is queued.</summary>
    public IReadOnlyList<int> Select(IReadOnlyList<BatchCandidate> queued)
    {
        if (queued.Count == 0) return [];
        var head = queued[0];
        var picked = new List<int> { 0 };
        int images = head.Images;
        long tokens = head.Tokens;
        for (int i = 1; i < queued.Count; i++)
        {
            var c = queued[i];
            if (!ReferenceEquals(c.Model, head.Model) || c.Key != head.Key) continue;
            if (images + c.Images > MaxImages || tokens + c.Tokens > MaxTokens) continue;
            picked.Add(i);
            images += c.Images;
            tokens += c.Tokens;
        }
        return picked;
    }
}
