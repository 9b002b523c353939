using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2;

/// <summary>One parameter of the transformer: its BFL key and shape.</summary>
public sealed record Flux2ParameterSpec(string Name, long[] Shape)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// The transformer's parameter list computed from a config alone (no tensors allocated), in the module's
/// <c>named_parameters()</c> order. The checkpoint writer and the module-structure test both use it.
/// </summary>
public static class Flux2Specs
{
    /// <summary>Every parameter name (BFL keys) and shape for <paramref name="c"/>.</summary>
    public static IReadOnlyList<Flux2ParameterSpec> Parameters(Flux2Config c)
    {
        c = c.Validated();
        long h = c.HiddenSize, mlp = c.MlpHiddenDim, d = c.HeadDim;
        var list = new List<Flux2ParameterSpec>();
        void Add(string name, params long[] shape) => list.Add(new Flux2ParameterSpec(name, shape));
        Add("img_in.weight", h, c.InChannels);
        Add("time_in.in_layer.weight", h, c.TimestepEmbedDim);
        Add("time_in.out_layer.weight", h, h);
        if (c.UseGuidanceEmbed)
        {
            Add("guidance_in.in_layer.weight", h, c.TimestepEmbedDim);
            Add("guidance_in.out_layer.weight", h, h);
        }
        Add("txt_in.weight", h, c.ContextInDim);
        for (int i = 0; i < c.Depth; i++)
            foreach (var s in new[] { "img", "txt" })
            {
                var p = $"double_blocks.{i}.{s}_";
                Add(p + "attn.qkv.weight", 3 * h, h);
                Add(p + "attn.norm.query_norm.scale", d);
                Add(p + "attn.norm.key_norm.scale", d);
                Add(p + "attn.proj.weight", h, h);
                Add(p + "mlp.0.weight", 2 * mlp, h);
                Add(p + "mlp.2.weight", h, mlp);
            }
        for (int i = 0; i < c.DepthSingleBlocks; i++)
        {
            var p = $"single_blocks.{i}.";
            Add(p + "linear1.weight", 3 * h + 2 * mlp, h);
            Add(p + "linear2.weight", h, h + mlp);
            Add(p + "norm.query_norm.scale", d);
            Add(p + "norm.key_norm.scale", d);
        }
        Add("double_stream_modulation_img.lin.weight", 6 * h, h);
        Add("double_stream_modulation_txt.lin.weight", 6 * h, h);
        Add("single_stream_modulation.lin.weight", 3 * h, h);
        Add("final_layer.linear.weight", c.InChannels, h);
        Add("final_layer.adaLN_modulation.1.weight", 2 * h, h);
        return list;
    }

    /// <summary>Total parameter count.</summary>
    public static long ParameterCount(Flux2Config c) => Parameters(c).Sum(p => p.ElementCount);

    /// <summary>
    /// A random tensor for one parameter, as the fixtures are initialised: a norm <c>.scale</c> ~ 1 + 0.1 N(0, 1),
    /// anything else (a Linear weight [out, in]) ~ N(0, 1) * in^-0.5. Drawn in float32, returned in <paramref name="dtype"/>.
    /// </summary>
    public static Tensor RandomTensor(string name, long[] shape, ScalarType dtype, Generator generator)
    {
        using var s = NewDisposeScope();
        var r = randn(shape, ScalarType.Float32, generator: generator);
        r = name.EndsWith(".scale", StringComparison.Ordinal) ? r * 0.1 + 1 : r * Math.Pow(shape[^1], -0.5);
        return r.to(dtype).MoveToOuterDisposeScope();
    }
}
