using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace InferenceServer.Reliability;

/// <summary>The --out folder of one verb: result.json (the record), summary.md (for a person), replay/ (fuzz).</summary>
public sealed class RunOutput
{
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public string Folder { get; }

    public RunOutput(string folder)
    {
        Folder = Path.GetFullPath(folder);
        Directory.CreateDirectory(Folder);
    }

    public string PathOf(string name) => Path.Combine(Folder, name);

    public void Write<T>(T result, string markdown)
    {
        File.WriteAllText(PathOf("result.json"), JsonSerializer.Serialize(result, Json));
        File.WriteAllText(PathOf("summary.md"), markdown);
    }

    /// <summary>A Markdown table from a header and rows.</summary>
    public static string Table(IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows)
    {
        var sb = new StringBuilder();
        sb.AppendLine("| " + string.Join(" | ", header) + " |");
        sb.AppendLine("|" + string.Concat(header.Select(_ => "---|")));
        foreach (var r in rows) sb.AppendLine("| " + string.Join(" | ", r.Select(c => c.Replace("|", "\\|").ReplaceLineEndings(" "))) + " |");
        return sb.ToString();
    }

    public static string Mb(long? kb) => kb is null ? "-" : $"{kb.Value / 1024.0:F0} MB";
}
