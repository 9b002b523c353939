using BenchmarkDotNet.Attributes;
using InferenceServer.Models.Flux2.Autoencoder;
using static TorchSharp.torch;

namespace InferenceServer.Benchmarks;

/// <summary>
/// FLUX.2 VAE decode of one 512x512 image (a 32x32 token grid) with the real klein VAE shape (models/vae/flux2-vae.json)
/// and random weights, which cost what real ones cost. Whole-image decode (no tiling) in FP32 and BF16.
/// Run: dotnet run -c Release --project bench/InferenceServer.Benchmarks -- --filter '*VaeDecode*' --warmupCount 1 --iterationCount 3
/// </summary>
[MemoryDiagnoser(false)]
public class VaeDecodeBenchmarks
{
    Flux2Autoencoder? ae;
    Tensor? tokens;

    [Params("Float32", "BFloat16")]
    public string DType { get; set; } = "Float32";

    [Params(512)]
    public int Side { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        manual_seed(0);
        ae = new Flux2Autoencoder(AutoEncoderConfig.Flux2).To(Enum.Parse<ScalarType>(DType));
        tokens = randn(1, AutoEncoderConfig.Flux2.TokenChannels, Side / 16, Side / 16);
    }

    [Benchmark]
    public void Decode()
    {
        using var image = ae!.Decode(tokens!);                              // [1, 3, Side, Side] float32
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        tokens?.Dispose();
        ae?.Dispose();
    }
}
