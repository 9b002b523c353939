using InferenceServer.Models.Lora;
using InferenceServer.Models;
using InferenceServer.Models.Text;
using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.ZImage;

/// <summary>
/// Z-Image(-Turbo) for the pipeline: text-to-image only; Qwen3 <c>hidden_states[-2]</c> caption features of the real
/// tokens; the static-shift schedule; noise <c>randn [1, 16, 2h, 2w]</c> patchified to 64-channel tokens; the FLUX.1 AE
/// in float32; pixels rounded half to even as diffusers does.
/// </summary>
public sealed class ZImageBackend(ZImageModel model) : IFamilyBackend
{

    public ZImageModel Model { get; } = model;
    public string Family => ZImageModelCard.Family;
    public string CardName => Model.Card.Name;
    public string Directory => Model.Directory;
    public Device Device => Model.Transformer.Device;
    public ScalarType DType => Model.Transformer.DType;
    public string WeightFormat => Models.Quantization.WeightQuantizer.Describe(Model.Transformer);
    public IReadOnlyList<string> LoadReport => Model.LoadReport;
    public LatentGeometry Geometry { get; } = new(16, (int)model.Transformer.Config.PatchDim);
    public SamplingDefaults Sampling => Model.Card.Sampling;
    public bool AcceptsReferences => false;
    public bool UsesGuidance => true;
    /// <summary>Made with the backend, so no hook is added while the engine thread runs the model.</summary>
    public LoraRuntime Lora { get; } = new(LoraTargets.Of(model.Transformer, ZImageLoraNaming.Instance));
    public PixelRounding Rounding => PixelRounding.HalfToEven;

    /// <summary>[L, hidden] features of the prompt's real tokens (L &lt;= 512).</summary>
    public Tensor EncodePrompt(string prompt, int? maxTokens = null) =>
        Model.TextEncoder.EncodeCaptions([Model.Tokenizer.EncodePrompt(prompt,
            maxTokens is { } n ? PromptFormat.ZImage with { MaxLength = Math.Min(n, PromptFormat.ZImage.MaxLength) } : PromptFormat.ZImage)], Model.TextLayers)[0];

    public Tensor EncodeReference(Tensor pixels) =>
        throw new RequestException("image", $"image: model {CardName} (zimage) generates from text only and takes no reference images");

    public float[] Schedule(int steps, long imageTokens) => ZImageSchedule.Sigmas(steps, Model.Card.Shift);

    /// <summary>Official noise: randn [1, 16, 2h, 2w] float32 on the CPU from its own generator, patchified to [1, h*w, 64].</summary>
    public Tensor Noise(long seed, long h, long w)
    {
        using var scope = NewDisposeScope();
        using var gen = new Generator((ulong)seed);
        var n = randn([1, Model.Transformer.Config.InChannels, 2 * h, 2 * w], ScalarType.Float32, generator: gen);
        return ZImagePatches.Patchify(n).MoveToOuterDisposeScope();
    }

    public IDenoiser Condition(IReadOnlyList<RowConditioning> rows, double? guidance, long h, long w, Func<string, Tensor> prompts)
    {
        double g = guidance ?? Sampling.Guidance;
        var negative = g > 1 ? prompts("") : null;                             // the official default negative prompt
        return new ZImageDenoiser(Model.Transformer, rows.Select(r => r.Prompt).ToList(), negative, g,
            Model.Card.CfgNormalization, Model.Card.CfgTruncation, h, w);
    }

    public Tensor Decode(Tensor tokens, long h, long w)
    {
        using var scope = NewDisposeScope();
        var latents = ZImagePatches.Unpatchify(tokens.to(ScalarType.Float32), h, w);   // [1, 16, 2h, 2w]
        return Model.Vae.Decode(latents.to(Model.Vae.Device)).MoveToOuterDisposeScope();
    }

    public DitFlops Flops(long imageTokens, string prompt)
    {
        long text = Model.Tokenizer.EncodePrompt(prompt, PromptFormat.ZImage).Length;
        var (linear, attention) = ZImageFlops.Forward(Model.Transformer.Config, imageTokens, text);
        return new DitFlops(linear, attention, text, ZImageFlops.Formula);
    }

    public void Dispose()
    {
        Lora.Dispose();
        Model.Dispose();
    }
}
