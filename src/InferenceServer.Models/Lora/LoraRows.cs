namespace InferenceServer.Models.Lora;

/// <summary>
/// Which batch row a linear's input starts at, when a model runs a layer one row at a time (<c>Flux2Math.RowWise</c> runs the
/// conditioning-vector linears on [1, D] slices): the adapter hooks read it to pick the row's adapters. Thread-static, as
/// each forward runs on one thread.
/// </summary>
public static class LoraRows
{
    [ThreadStatic] static long? current;

    /// <summary>The first batch row of the current input, or null when the input holds every row (the usual case).</summary>
    public static long? Current => current;

    /// <summary>Marks the inputs of the calls inside the returned scope as starting at batch row <paramref name="row"/>.</summary>
    public static Scope Offset(long row)
    {
        var previous = current;
        current = row;
        return new Scope(previous);
    }

    public readonly struct Scope(long? previous) : IDisposable
    {
        public void Dispose() => current = previous;
    }
}
