namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// A request the pipeline refuses before any model work. <see cref="Field"/> names the offending request field as the
/// front ends spell it (prompt, n, steps, size, image, guidance, ...), so they report it without parsing the message.
/// </summary>
public sealed class RequestException(string field, string message, Exception? inner = null) : ArgumentException(message, field, inner)
{
    public string Field { get; } = field;
    /// <summary>The message alone (ArgumentException appends the parameter name to <see cref="Exception.Message"/>).</summary>
    public override string Message => base.Message.Replace($" (Parameter '{Field}')", "", StringComparison.Ordinal);
}
