using System.Text;

namespace InferenceServer.Server.Observability;

/// <summary>
/// Client-supplied text made safe for one log line: control and non-ASCII characters are escaped (<c>\r</c>, <c>\n</c>,
/// <c>\t</c>, <c>\xNN</c>, <c>\uNNNN</c>), so a model name, path or error message carrying "\r\nINFO ..." cannot forge
/// a line; long values are cut (the client has the whole text in its answer).
/// </summary>
public static class LogText
{
    public const int MaxLength = 512;

    public static string Escape(string? text)
    {
        if (string.IsNullOrEmpty(text)) return text ?? "";
        bool clean = text.Length <= MaxLength;
        foreach (char c in text) clean &= c is >= ' ' and < (char)127;
        if (clean) return text;
        var b = new StringBuilder(Math.Min(text.Length, MaxLength) + 16);
        foreach (char c in text)
        {
            if (b.Length >= MaxLength) { b.Append("...(").Append(text.Length).Append(" chars)"); break; }
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
