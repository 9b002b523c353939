using InferenceServer.Models.Weights;
using InferenceServer.Server.Cli;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Cli;

/// <summary>
/// One tiny random BFL folder per test class (written by <c>random-checkpoint</c> itself); each test damages its own copy,
/// so a corrupt file never leaks into another test.
/// </summary>
public sealed class TinyModelFolder : IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("tiny-model-").FullName;

    public TinyModelFolder()
    {
        int rc = CommandLine.Build().Parse(["random-checkpoint", "--preset", "tiny", "--out", Original, "--dtype", "fp32", "--seed", "4"]).Invoke();
        if (rc != 0) throw new InvalidOperationException($"random-checkpoint exited {rc}");
    }

    /// <summary>The untouched folder: read it, never change it.</summary>
    public string Original => Path.Combine(root, "original");

    /// <summary>A fresh copy under a new temporary folder (the caller deletes <paramref name="parent"/>).</summary>
    public string Copy(out string parent)
    {
        parent = Directory.CreateTempSubdirectory("tiny-copy-").FullName;
        string dst = Path.Combine(parent, "model");
        foreach (var f in Directory.EnumerateFiles(Original, "*", SearchOption.AllDirectories))
        {
            string to = Path.Combine(dst, Path.GetRelativePath(Original, f));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(f, to);
        }
        return dst;
    }

    /// <summary>Rewrites the safetensors file with tensor <paramref name="name"/> replaced by <paramref name="value"/> (e.g. NaN).</summary>
    public static void Poison(string file, string name, float value)
    {
        using var scope = NewDisposeScope();
        List<(string, Tensor)> tensors;
        using (var f = SafetensorsFile.Open(file))
            tensors = f.Entries.Select(e => (e.Name, e.Name == name ? full(e.Shape, value, e.DType.ToScalarType()) : f.Load(e.Name))).ToList();
        SafetensorsWriter.Write(file, tensors);
    }

    public void Dispose() => Directory.Delete(root, recursive: true);
}
