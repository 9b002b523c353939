using System.Globalization;

namespace InferenceServer.Server.Lora;

/// <summary>
/// An adapter as the command line and the merge setting name it: <c>NAME_OR_FILE[:SCALE]</c>, scale 1 when absent. The
/// text after the last ':' is the scale only when it parses as a number, so a path holding ':' still reads as a path.
/// </summary>
public sealed record LoraSpec(string NameOrFile, double Scale)
{
    public const string Extension = ".safetensors";

    public static LoraSpec Parse(string text)
    {
        text = text.Trim();
        int colon = text.LastIndexOf(':');
        if (colon > 0 && double.TryParse(text[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out double scale))
        {
            if (!double.IsFinite(scale)) throw new ArgumentException($"LoRA '{text}': the scale must be a finite number");
            return new LoraSpec(text[..colon], scale);
        }
        if (text.Length == 0) throw new ArgumentException("LoRA: empty name");
        return new LoraSpec(text, 1.0);
    }

    /// <summary>
    /// The file: <see cref="NameOrFile"/> itself when it is an existing file or looks like a path (has a directory part or
    /// the .safetensors extension), else the adapter of that name in <paramref name="directory"/>.
    /// Throws <see cref="FileNotFoundException"/> / <see cref="ArgumentException"/> with a message for the user.
    /// </summary>
    public string Resolve(string? directory)
    {
        bool pathLike = File.Exists(NameOrFile) || NameOrFile.Contains(Path.DirectorySeparatorChar) || NameOrFile.Contains('/')
            || NameOrFile.EndsWith(Extension, StringComparison.OrdinalIgnoreCase);
        if (pathLike)
            return File.Exists(NameOrFile) ? Path.GetFullPath(NameOrFile) : throw new FileNotFoundException($"LoRA file {NameOrFile}: no such file");
        if (directory is null)
            throw new ArgumentException($"LoRA '{NameOrFile}': not a file, and no adapter folder is set to look the name up in (--lora-dir)");
        return LoraFolder.PathOf(directory, NameOrFile)
            ?? throw new FileNotFoundException($"LoRA '{NameOrFile}': no {NameOrFile}{Extension} in {Path.GetFullPath(directory)}");
    }

    /// <summary>"name" or "name:scale", as logs and listings show it.</summary>
    public static string Describe(string name, double scale) =>
        scale == 1.0 ? name : $"{name}:{scale.ToString("0.###", CultureInfo.InvariantCulture)}";
}
