namespace InferenceServer.Models.Runtime;

/// <summary>
/// The token a long computation on this thread checks between its blocks (VAE encoder and decoder blocks, decode tiles),
/// so a request whose deadline passed stops within one block instead of after a whole 4K decode. Ambient, like
/// <see cref="InferenceServer.Models.Lora.LoraRows"/>: the modules keep TorchSharp's forward(Tensor) signature.
/// </summary>
public static class ComputeCancellation
{
    [ThreadStatic] static CancellationToken current;

    /// <summary>Makes <paramref name="token"/> the current thread's token until the returned scope is disposed.</summary>
    public static Scope Use(CancellationToken token)
    {
        var previous = current;
        current = token;
        return new Scope(previous);
    }

    /// <summary>Throws <see cref="OperationCanceledException"/> when the current thread's token is cancelled.</summary>
    public static void ThrowIfCancelled() => current.ThrowIfCancellationRequested();

    /// <summary><paramref name="output"/> of a block, or, when the token is cancelled, that output disposed and an <see cref="OperationCanceledException"/>.</summary>
    public static TorchSharp.torch.Tensor Checked(TorchSharp.torch.Tensor output)
    {
        if (!current.IsCancellationRequested) return output;
        output.Dispose();
        throw new OperationCanceledException(current);
    }

    public readonly struct Scope(CancellationToken previous) : IDisposable
    {
        public void Dispose() => current = previous;
    }
}
