using System.Text;

namespace InferenceServer.Pipeline.Generation;

/// <summary>
/// Text a client sent, made safe to echo. In an error message (<see cref="Quote"/>) a value is cut to a few dozen
/// characters: a 20 MB model name was answered with a 20 MB body and logged whole (the probe's RSS grew 300 MB a
/// request). In a log line (<see cref="ForLog"/>) control and non-ASCII characters are escaped (<c>\r</c>, <c>\n</c>,
/// <c>\t</c>, <c>\xNN</c>, <c>\uNNNN</c>), so "\r\nINFO ..." cannot forge a line, and long text is cut.
/// </summary>
public static class ClientText
{
    /// <summary>Longest value <see cref="Quote"/> echoes whole.</summary>
    public const int MaxQuoted = 64;
    /// <summary>Longest text <see cref="ForLog"/> writes whole.</summary>
    public const int MaxLogged = 512;

    /// <summary><c>'value'</c>, or <c>'first 64 characters...' (N characters)</c> when longer.</summary>
    public static string Quote(string? value)
    {
        value ??= "";
        return value.Length <= MaxQuoted ? $"'{value}'" : $"'{value[..MaxQuoted]}...' ({value.Length:N0} characters)";
    }

    /// <summary>One printable-ASCII line of at most <see cref="MaxLogged"/> characters (plus a length note).</summary>
    public static string ForLog(string? text)
    {
        if (string.IsNullOrEmpty(text)) return text ?? "";
        bool clean = text.Length <= MaxLogged;
        foreach (char c in text) clean &= c is >= ' ' and < (char)127;
        if (clean) return text;
        var b = new StringBuilder(Math.Min(text.Length, MaxLogged) + 16);
        foreach (char c in text)
        {
            if (b.Length >= MaxLogged) { b.Append("...(").Append(text.Length).Append(" chars)"); break; }
            switch (c)
            {
                case '\r': b.Append("\\r"); break;
                case '\n': b.Append("\\n"); break;
                case '\t': b.Append("\\t"); break;
                case '\\': b.Append("\\\\"); break;
                case < ' ' or (char)127: b.Append("\\x").Append(((int)c).ToString("x2")); break;
                case > (char)127: b.Append("\\u").Append(((int)c).ToString("x4")); break;
                default: b.Append(c); break;
            }
        }
        return b.ToString();
    }
}
