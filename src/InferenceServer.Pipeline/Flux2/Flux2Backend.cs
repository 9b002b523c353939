using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Lora;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Flux2;

/// <summary>
/// FLUX.2 ([klein], [dev]) for the pipeline: klein's stacked Qwen3 features, references as VAE latents appended after the
/// image tokens with t offsets 10, 20, ... (BFL <c>encode_image_refs</c>), the resolution-shifted schedule, noise
/// <c>randn [1, 128, h, w]</c> packed to tokens, and the BFL AE with its 2x2 packing.
/// </summary>
public sealed class Flux2Backend(Flux2Model model, bool ownsModel = true) : IFamilyBackend
{
    public const string FamilyName = "flux2";

    public Flux2Model Model { get; } = model;
    public string Family => FamilyName;
    public string CardName => Model.Card.Name;
    public string Directory => Model.Directory;
    public Device Device => Model.Device;
    public ScalarType DType => Model.Transformer.DType;
    public string WeightFormat => Model.WeightFormat;
    public IReadOnlyList<string> LoadReport => Model.LoadReport;
    public LatentGeometry Geometry { get; } = new(16, (int)model.Transformer.Config.InChannels);
    public SamplingDefaults Sampling => Model.Card.Sampling;
    public bool AcceptsReferences => true;
    public PixelRounding Rounding => PixelRounding.Truncate;
    /// <summary>Made with the backend, so no hook is added while the engine thread runs the model.</summary>
    public LoraRuntime Lora { get; } = new(LoraTargets.Of(model.Transformer, Flux2LoraNaming.Instance));
    public bool UsesGuidance => Model.Card.Transformer.UseGuidanceEmbed || !Model.Card.Sampling.Distilled;

    /// <summary>The stacked Qwen3 hidden states [1, L, context dim] in the encoder's dtype (L: the encoder's max length, 512).</summary>
    public Tensor EncodePrompt(string prompt, int? maxTokens = null)
    {
        var tp = Model.Tokenizer.EncodePrompt(prompt, Math.Min(maxTokens ?? int.MaxValue, Model.TextEncoder.Config.MaxLength));
        return Model.TextEncoder.Encode([tp], Model.TextLayers);
    }

    /// <summary>[128, H/16, W/16] packed AE latent.</summary>
    public Tensor EncodeReference(Tensor pixels) => Model.Vae.Encode(pixels)[0];

    public float[] Schedule(int steps, long imageTokens) => FlowSchedule.GetSchedule(steps, (int)imageTokens);

    /// <summary>BFL get_noise for one image: randn [1, 128, h, w] float32 on the CPU from its own generator, as tokens [1, h*w, 128].</summary>
    public Tensor Noise(long seed, long h, long w)
    {
        using var scope = NewDisposeScope();
        using var gen = new Generator((ulong)seed);
        var n = randn([1, Geometry.TokenChannels, h, w], ScalarType.Float32, generator: gen);
        return Flux2Packing.BatchedPrcImg(n).Tokens.MoveToOuterDisposeScope();
    }

    public IDenoiser Condition(IReadOnlyList<RowConditioning> rows, double? guidance, long h, long w, Func<string, Tensor> prompts)
    {
        using var scope = NewDisposeScope();
        bool cfg = !Model.Card.Sampling.Distilled;
        var dtype = DType;
        var ctx = cat(rows.Select(r => r.Prompt).ToList(), 0).to(dtype);                                 // [R, Lt, D]
        if (cfg) ctx = cat([prompts("").to(dtype).expand(rows.Count, -1, -1), ctx], 0);                   // [2R, Lt, D] = [uncond; cond]
        var (ctxIn, ctxIds) = Flux2Packing.BatchedPrcTxt(ctx);
        Tensor? refTokens = null, refIds = null;
        if (rows[0].References.Count > 0)
        {
            var packed = rows.Select(r => Flux2Packing.ReferenceTokens(r.References)).ToList();
            refTokens = cat(packed.Select(p => p.Tokens).ToList(), 0).to(dtype);                         // [R, L_ref, 128]
            refIds = cat(packed.Select(p => p.Ids).ToList(), 0);                                           // [R, L_ref, 4]
        }
        var imgIds = Flux2Packing.BatchedPrcImg(zeros(1, 1, h, w)).Ids;                                    // [1, h*w, 4]
        return new Flux2Denoiser(Model.Transformer, cfg, (float)(guidance ?? 1.0), imgIds, ctxIn, ctxIds, refTokens, refIds);
    }

    public Tensor Decode(Tensor tokens, long h, long w)
    {
        using var scope = NewDisposeScope();
        var ids = Flux2Packing.BatchedPrcImg(zeros(1, 1, h, w, device: tokens.device)).Ids;
        return Model.Vae.Decode(Flux2Packing.Unpack(tokens, ids)).MoveToOuterDisposeScope();            // [1, 3, H, W]
    }

    /// <summary>klein's text is always padded to the encoder's max length, whatever the prompt.</summary>
    public DitFlops Flops(long imageTokens, string prompt)
    {
        long text = Model.TextEncoder.Config.MaxLength;
        var c = Model.Card.Transformer;
        return new DitFlops(Flux2Flops.Linear(c, imageTokens, text), Flux2Flops.Attention(c, imageTokens, text), text, Flux2Flops.Formula);
    }

    public void Dispose()
    {
        Lora.Dispose();
        if (ownsModel) Model.Dispose();
    }
}
