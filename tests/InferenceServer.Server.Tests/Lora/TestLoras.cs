using System.Globalization;
using InferenceServer.Models;
using InferenceServer.Models.Lora;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Tests.Serving;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Lora;

/// <summary>
/// One adapter folder for the tiny models, written once per test run with our own writer:
/// <c>style</c> (BFL names, rank 4, seed 1) and the same adapter as <c>style-diffusers</c> and <c>style-kohya</c>;
/// <c>other</c> (BFL, rank 4, seed 3: the same size as style); <c>detail</c> (kohya, rank 2, attention only, seed 2);
/// <c>zimage-style</c> (an adapter of the tiny Z-Image, which fits no FLUX.2 layer); <c>broken</c> (not safetensors).
/// </summary>
public static class TestLoras
{
    sealed record Folder(string Dir, IReadOnlyDictionary<string, long> LoadedBytes);

    static readonly Lazy<Folder> folder = new(Write);

    /// <summary>The folder (serve it with <c>Lora.Directory</c>).</summary>
    public static string Dir => folder.Value.Dir;

    /// <summary>Bytes an adapter holds once loaded for the tiny FLUX.2 model in FP32 (the test servers' dtype).</summary>
    public static long LoadedBytes(string name) => folder.Value.LoadedBytes[name];

    public static string PathOf(string name) => Path.Combine(Dir, name + ".safetensors");

    static Folder Write()
    {
        string dir = Directory.CreateTempSubdirectory("server-loras-").FullName;
        var bytes = new Dictionary<string, long>();
        using (var flux = ModelFamilies.Load(TinyModel.Folder, new ModelLoadOptions(ScalarType.Float32)))
        {
            var targets = flux.Lora.Targets;
            WriteRandom(dir, "style", targets, rank: 4, seed: 1, attentionOnly: false, LoraFileFormat.Bfl);
            WriteRandom(dir, "style-diffusers", targets, rank: 4, seed: 1, attentionOnly: false, LoraFileFormat.Diffusers);
            WriteRandom(dir, "style-kohya", targets, rank: 4, seed: 1, attentionOnly: false, LoraFileFormat.Kohya);
            WriteRandom(dir, "other", targets, rank: 4, seed: 3, attentionOnly: false, LoraFileFormat.Bfl);
            WriteRandom(dir, "detail", targets, rank: 2, seed: 2, attentionOnly: true, LoraFileFormat.Kohya);
            foreach (var name in new[] { "style", "style-diffusers", "style-kohya", "other", "detail" })
            {
                using var adapter = LoraAdapter.Load(Path.Combine(dir, name + ".safetensors"), targets, ScalarType.Float32);
                bytes[name] = adapter.Bytes;
            }
        }
        using (var zimage = ModelFamilies.Load(TinyModel.ZImageFolder, new ModelLoadOptions(ScalarType.Float32)))
            WriteRandom(dir, "zimage-style", zimage.Lora.Targets, rank: 4, seed: 1, attentionOnly: false, LoraFileFormat.Diffusers);
        File.WriteAllText(Path.Combine(dir, "broken.safetensors"), "this is not a safetensors file");
        return new Folder(dir, bytes);
    }

    static void WriteRandom(string dir, string name, LoraTargets targets, int rank, long seed, bool attentionOnly, LoraFileFormat format)
    {
        var layers = LoraWriter.Random(targets, rank, seed, attentionOnly);
        try { LoraWriter.Write(Path.Combine(dir, name + ".safetensors"), targets, layers, format, ScalarType.Float32); }
        finally
        {
            foreach (var (_, down, up) in layers) { down.Dispose(); up.Dispose(); }
        }
    }

    static readonly ImageCodec Codec = new();

    /// <summary>Largest and mean absolute difference of two encoded images' pixels (same size).</summary>
    public static (int Max, double Mean) PixelDifference(byte[] a, byte[] b)
    {
        var x = Codec.Decode(a);
        var y = Codec.Decode(b);
        Assert.Equal((x.Width, x.Height), (y.Width, y.Height));
        int max = 0;
        long sum = 0;
        for (int i = 0; i < x.Rgb.Length; i++)
        {
            int d = Math.Abs(x.Rgb[i] - y.Rgb[i]);
            max = Math.Max(max, d);
            sum += d;
        }
        return (max, (double)sum / x.Rgb.Length);
    }

    /// <summary>The value of a Prometheus sample line (<c>name{labels} value</c>, labels written as they appear), 0 when absent.</summary>
    public static double Metric(string text, string series) =>
        text.Split('\n').Where(l => l.StartsWith(series + " ", StringComparison.Ordinal))
            .Select(l => double.Parse(l[(series.Length + 1)..], CultureInfo.InvariantCulture)).SingleOrDefault();
}
