using InferenceServer.Models.Quantization;
using static TorchSharp.torch;

namespace InferenceServer.Models;

/// <summary>How a model folder is loaded, whatever its family.</summary>
/// <param name="DType">Activation and float-weight dtype (bfloat16 or float32).</param>
/// <param name="Quantization">Transformer weight quantization: none (as stored), fp8 or int8. The VAE and text encoder are never quantized.</param>
public sealed record ModelLoadOptions(ScalarType DType = ScalarType.BFloat16, WeightQuantization Quantization = WeightQuantization.None)
{
    /// <summary>Where to load (default the CPU).</summary>
    public Device? Device { get; init; }

    /// <summary>When set, text encoders with identical weights are loaded once and shared with the other models loaded through it.</summary>
    public Qwen3.SharedTextEncoders? SharedTextEncoders { get; init; }

    /// <summary>Whether CPU weights may be memory maps of the files (default: only files on a read-only filesystem; see <see cref="Weights.WeightMapping"/>).</summary>
    public Weights.WeightMapping Mapping { get; init; } = Weights.WeightMapping.Auto;

    /// <summary>
    /// How a folder's checkpoints (<paramref name="checkpoints"/>: files or folders) are read: <see cref="Mapping"/>, and
    /// copied pages dropped from the page cache when the machine cannot keep these files cached beside the loaded model.
    /// </summary>
    public Weights.ReadOptions ReadOptionsFor(params string[] checkpoints) =>
        new(Mapping, DropCopiedPages: !Weights.PageCache.CanKeep(checkpoints.Sum(Weights.Checkpoint.FileBytes)));

    /// <summary>When set, receives each component's timings and memory, and the load's progress as tensors are read.</summary>
    public Weights.LoadMeter? Meter { get; init; }
}
