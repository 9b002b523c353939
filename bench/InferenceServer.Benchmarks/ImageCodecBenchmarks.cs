using BenchmarkDotNet.Attributes;
using InferenceServer.Pipeline.Images;

namespace InferenceServer.Benchmarks;

/// <summary>
/// Encoding a generated image (as the server does for each result) at the formats' usual settings. Iterations are
/// bounded: AVIF 2048x2048 takes seconds, and the in-process toolchain refuses a benchmark that runs for minutes.
/// </summary>
[MemoryDiagnoser, WarmupCount(2), IterationCount(10)]
public class ImageEncodeBenchmarks
{
    RgbImage image = null!;

    [Params(1024, 2048)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup() => image = ImageBenchData.Scene(Size, Size);

    [Benchmark] public int Png() => ImageCodec.Encode(image, ImageFormat.Png).Bytes.Length;
    [Benchmark] public int JpegQ90() => ImageCodec.Encode(image, ImageFormat.Jpeg, 90).Bytes.Length;
    [Benchmark] public int WebpQ90() => ImageCodec.Encode(image, ImageFormat.Webp, 90).Bytes.Length;
    [Benchmark] public int AvifQ60() => ImageCodec.Encode(image, ImageFormat.Avif, 60).Bytes.Length;
}

/// <summary>Decoding a client's reference image: a 1024x1024 JPEG (q90) to RGB8, and on to the model's [3, H, W] tensor.</summary>
[MemoryDiagnoser]
public class ImageDecodeBenchmarks
{
    readonly ImageCodec codec = new();
    byte[] jpeg = null!;

    [GlobalSetup]
    public void Setup() => jpeg = ImageCodec.Encode(ImageBenchData.Scene(1024, 1024), ImageFormat.Jpeg, 90).Bytes;

    [Benchmark] public int DecodeJpeg1024() => codec.Decode(jpeg).Rgb.Length;

    [Benchmark]
    public long DecodeJpeg1024ToTensor()
    {
        using var t = ImageTensors.ToTensor(codec.Decode(jpeg));
        return t.numel();
    }
}

static class ImageBenchData
{
    /// <summary>Smooth gradients and a soft disk plus mild noise: compresses like a generated image, unlike pure noise.</summary>
    public static RgbImage Scene(int width, int height)
    {
        var rng = new Random(1);
        var rgb = new byte[width * height * 3];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                double u = (double)x / width, v = (double)y / height;
                double disk = Math.Exp(-(Math.Pow(u - 0.6, 2) + Math.Pow(v - 0.4, 2)) * 18);
                int i = (y * width + x) * 3;
                rgb[i] = Clamp(220 * u + 30 * disk + 6 * (rng.NextDouble() - 0.5));
                rgb[i + 1] = Clamp(200 * v * (1 - disk) + 40 + 6 * (rng.NextDouble() - 0.5));
                rgb[i + 2] = Clamp(120 + 100 * Math.Sin(6 * u + 3 * v + 20 * u * v) * (1 - disk) + 6 * (rng.NextDouble() - 0.5));
            }
        return new RgbImage(width, height, rgb);
    }

    static byte Clamp(double v) => (byte)Math.Clamp(Math.Round(v), 0, 255);
}
