using InferenceServer.Models.Quantization;
using static TorchSharp.torch;

namespace InferenceServer.Server.Cli;

/// <summary>
/// The one place a <c>--dtype</c> / <c>InferenceServer:DType</c> value becomes a load choice: bf16 and fp32 are the compute
/// dtype of every component; fp8 and int8 quantize the transformer's linears (compute in bf16, FP8 matmuls through the
/// scaled_mm kernel on CUDA where it works, per-layer dequantization elsewhere).
/// </summary>
public static class WeightsChoice
{
    public static readonly string[] Names = ["bf16", "fp32", "fp8", "int8"];

    public static (ScalarType Compute, WeightQuantization Quantization) Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "bf16" or "bfloat16" => (ScalarType.BFloat16, WeightQuantization.None),
        "fp32" or "float32" => (ScalarType.Float32, WeightQuantization.None),
        "fp8" => (ScalarType.BFloat16, WeightQuantization.Fp8),
        "int8" => (ScalarType.BFloat16, WeightQuantization.Int8),
        _ => throw new ArgumentException($"dtype '{name}': expected one of {string.Join(", ", Names)}"),
    };
}
