using InferenceServer.Models.Runtime;
using System.Diagnostics;
using TorchSharp;
using InferenceServer.Models.Flux2.Autoencoder;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks;

/// <summary>
/// Peak resident memory of one FLUX.2 VAE decode (real shape, random weights), run once per process:
/// <c>dotnet run -c Release --project bench/InferenceServer.Benchmarks -- vae-memory SIDE whole|tiled [BUDGET_GIB] [Float32|BFloat16]</c>.
/// The peak (VmHWM) is reset after the model and input exist, so the figure is the decode's own working set.
/// </summary>
static class VaeMemoryProbe
{
    public static void Run(string[] args)
    {
        int side = int.Parse(args[0]);
        bool tiled = args[1] == "tiled";
        double budgetGiB = args.Length > 2 ? double.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture) : 2;
        var dtype = args.Length > 3 ? Enum.Parse<ScalarType>(args[3]) : ScalarType.Float32;
        var c = AutoEncoderConfig.Flux2;
        manual_seed(0);
        using var ae = new Flux2Autoencoder(c).To(dtype);
        using var tokens = randn(1, c.TokenChannels, side / 16, side / 16);
        long z = side / c.DownFactor;
        var options = tiled
            ? new VaeDecodeOptions { MemoryBudgetBytes = (long)(budgetGiB * (1L << 30)) }
            : new VaeDecodeOptions { MemoryBudgetBytes = long.MaxValue };
        long baseline = ProcessMemory.Rss / 1024;
        ProcessMemory.ResetPeak();                                         // VmHWM from the current RSS
        var sw = Stopwatch.StartNew();
        using (var image = ae.Decode(tokens, options)) { }
        sw.Stop();
        long peak = ProcessMemory.Peak / 1024;
        int elementSize = dtype.ElementSize();
        int tile = tiled ? AutoEncoderMemory.ChooseTile(c, 1, z, z, elementSize, options) : (int)z;
        long estimate = AutoEncoderMemory.EstimateDecodeBytes(c, 1, Math.Min(z, tile), Math.Min(z, tile), elementSize);
        Console.WriteLine($"vae-memory {side}x{side} {dtype} {(tiled ? $"tiled (budget {budgetGiB} GiB, tile {tile} latent px)" : "whole")}: " +
            $"baseline RSS {baseline / 1048576.0:F2} GiB, decode peak +{(peak - baseline) / 1048576.0:F2} GiB (estimate {estimate / (double)(1L << 30):F2} GiB), {sw.Elapsed.TotalSeconds:F1} s");
    }
}
