using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.ZImage;

/// <summary>
/// The transformer's tensors computed from a config alone (nothing allocated), in the official <c>named_parameters()</c> order
/// under diffusers names: what a random-weight folder writes (<c>transformer/diffusion_pytorch_model-*.safetensors</c>) and what
/// the module-structure tests compare. Turbo: 521 tensors, 6,154,908,736 parameters.
/// </summary>
public static class ZImageSpecs
{
    /// <summary>Every tensor (diffusers key, shape) of <paramref name="c"/>, stored as <paramref name="dtype"/>.</summary>
    public static IReadOnlyList<TensorSpec> Transformer(ZImageConfig c, ScalarType dtype = ScalarType.BFloat16)
    {
        c = c.Validated();
        var st = SafetensorsDTypes.FromScalarType(dtype);
        long dim = c.Dim, ffn = c.FfnHidden, hd = c.HeadDim, ad = c.AdalnDim;
        var list = new List<TensorSpec>();
        void Add(string name, params long[] shape) => list.Add(new TensorSpec(name, st, shape));
        void Block(string p, bool modulated)
        {
            foreach (var w in new[] { "to_q", "to_k", "to_v", "to_out.0" }) Add($"{p}.attention.{w}.weight", dim, dim);
            Add($"{p}.attention.norm_q.weight", hd);
            Add($"{p}.attention.norm_k.weight", hd);
            Add($"{p}.feed_forward.w1.weight", ffn, dim);
            Add($"{p}.feed_forward.w2.weight", dim, ffn);
            Add($"{p}.feed_forward.w3.weight", ffn, dim);
            foreach (var n in new[] { "attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2" }) Add($"{p}.{n}.weight", dim);
            if (!modulated) return;
            Add($"{p}.adaLN_modulation.0.weight", 4 * dim, ad);
            Add($"{p}.adaLN_modulation.0.bias", 4 * dim);
        }
        Add("x_pad_token", 1, dim);
        Add("cap_pad_token", 1, dim);
        Add("all_x_embedder.2-1.weight", dim, c.PatchDim);
        Add("all_x_embedder.2-1.bias", dim);
        Add("all_final_layer.2-1.linear.weight", c.PatchDim, dim);
        Add("all_final_layer.2-1.linear.bias", c.PatchDim);
        Add("all_final_layer.2-1.adaLN_modulation.1.weight", dim, ad);
        Add("all_final_layer.2-1.adaLN_modulation.1.bias", dim);
        for (int i = 0; i < c.NRefinerLayers; i++) Block($"noise_refiner.{i}", modulated: true);
        for (int i = 0; i < c.NRefinerLayers; i++) Block($"context_refiner.{i}", modulated: false);
        Add("t_embedder.mlp.0.weight", c.TEmbedderHidden, c.FrequencyEmbeddingSize);
        Add("t_embedder.mlp.0.bias", c.TEmbedderHidden);
        Add("t_embedder.mlp.2.weight", ad, c.TEmbedderHidden);
        Add("t_embedder.mlp.2.bias", ad);
        Add("cap_embedder.0.weight", c.CapFeatDim);
        Add("cap_embedder.1.weight", dim, c.CapFeatDim);
        Add("cap_embedder.1.bias", dim);
        for (int i = 0; i < c.NLayers; i++) Block($"layers.{i}", modulated: true);
        return list;
    }

    /// <summary>Total parameter count.</summary>
    public static long ParameterCount(ZImageConfig c) => Transformer(c).Sum(s => s.ElementCount);

    /// <summary>
    /// The random value of one tensor for <paramref name="seed"/> (<see cref="RandomWeights.Tensor"/>: biases ~ 0.1 N, norm weights
    /// ~ 1 + 0.1 N, matrices and pad tokens ~ N / sqrt(fan-in)), for <see cref="SafetensorsWriter"/>'s streaming overloads:
    /// <c>SafetensorsWriter.WriteSharded(dir, "diffusion_pytorch_model", ZImageSpecs.Transformer(c), s =&gt; ZImageSpecs.RandomTensor(s, seed), ...)</c>.
    /// </summary>
    public static Tensor RandomTensor(TensorSpec spec, long seed) => RandomWeights.Tensor(spec, seed);
}
