using System.Threading.Channels;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// A wake-up for a loop that also looks on a timer: any number of <see cref="Set"/> calls before a wait end it once, and a
/// wait ends at the next <see cref="Set"/>, at its timeout, or with the caller's cancellation. Set never blocks (store
/// change handlers run on the writer's thread).
/// </summary>
public sealed class WakeSignal
{
    readonly Channel<bool> channel = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });

    public void Set() => channel.Writer.TryWrite(true);

    /// <summary>True when set, false at the timeout; throws <see cref="OperationCanceledException"/> when <paramref name="ct"/> is cancelled.</summary>
    public async Task<bool> WaitAsync(TimeSpan timeout, CancellationToken ct = default)
    {
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
        wait.CancelAfter(timeout);
        try
        {
            await channel.Reader.ReadAsync(wait.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { return false; }
    }
}
