using System.Security.Cryptography;
using System.Text;

namespace InferenceServer.Models.Files;

/// <summary>
/// Writes files so that a final name only ever holds complete content: the bytes go to <c>NAME.tmp-XXXXXXXX</c> in the same
/// folder (same filesystem, so the rename is atomic), are flushed to the disk, and the temporary is renamed over NAME. On any
/// failure (a full disk, a cancelled run) the temporary is deleted and NAME is left as it was. A process killed mid-write
/// leaves only a <c>*.tmp-*</c> file, which no loader mistakes for a checkpoint.
/// </summary>
public static class AtomicFile
{
    /// <summary>Streams <paramref name="path"/>'s content through <paramref name="write"/>, then renames it into place.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        path = Path.GetFullPath(path);
        string temp = $"{path}.tmp-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}";
        try
        {
            using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(fs);
                fs.Flush(flushToDisk: true); // a crash after the rename must not find a renamed but empty file
            }
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e)
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            // The OS names the temporary; the user wants the file they asked for. (An error of the producer, e.g. reading a
            // source file, names its own file and is left alone.)
            bool namesTemp = e.Message.Contains(temp, StringComparison.Ordinal);
            if (namesTemp && e is IOException) throw new IOException($"{path}: {Reason(e.Message, temp)}", e);
            if (namesTemp && e is UnauthorizedAccessException) throw new UnauthorizedAccessException($"{path}: cannot write ({Reason(e.Message, temp)})", e);
            throw;
        }
    }

    /// <summary>Writes <paramref name="bytes"/> as the whole file.</summary>
    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, s => s.Write(bytes));

    /// <summary>Writes <paramref name="text"/> as UTF-8 without a byte-order mark.</summary>
    public static void WriteAllText(string path, string text) => WriteAllBytes(path, new UTF8Encoding(false).GetBytes(text));

    /// <summary>Copies <paramref name="source"/> to <paramref name="destination"/> (overwriting it), complete or not at all.</summary>
    public static void Copy(string source, string destination)
    {
        using var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
        Write(destination, input.CopyTo);
    }

    /// <summary>The OS message without the temporary's name (".NET: 'No space left on device : '/x/y.tmp-1234'").</summary>
    static string Reason(string message, string temp) =>
        message.Replace($" : '{temp}'", "", StringComparison.Ordinal).Replace($"'{temp}'", "the temporary file", StringComparison.Ordinal).Trim();
}
