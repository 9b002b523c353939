using System.Text.Json.Nodes;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2;

/// <summary>
/// Rows <c>[BflStart, BflStart+Count)</c> of a BFL tensor are rows <c>[DiffusersStart, DiffusersStart+Count)</c> of
/// the diffusers tensor <c>Name</c> (columns unchanged).
/// </summary>
public sealed record Flux2DiffusersPart(string Name, long BflStart, long DiffusersStart, long Count);

/// <summary>
/// The BFL &lt;-&gt; diffusers (<c>Flux2Transformer2DModel</c>) layout of the transformer, as diffusers'
/// <c>scripts/convert_flux2_to_diffusers.py</c> defines it. <see cref="Parts"/> is the one mapping; both directions
/// are derived from it: fused <c>qkv</c> splits into <c>to_q/to_k/to_v</c> (text: <c>add_{q,k,v}_proj</c>),
/// <c>final_layer.adaLN_modulation.1</c> (shift, scale) becomes <c>norm_out.linear</c> (scale, shift), QK-norm
/// <c>.scale</c> becomes <c>.weight</c>, everything else is renamed.
/// </summary>
public static class Flux2Diffusers
{
    /// <summary>Where each row block of the BFL tensor <paramref name="bflName"/> (with <paramref name="rows"/> rows) lives in diffusers.</summary>
    public static IReadOnlyList<Flux2DiffusersPart> Parts(string bflName, long rows)
    {
        Flux2DiffusersPart[] Whole(string name) => [new(name, 0, 0, rows)];
        var k = bflName.Split('.');
        if (k[0] == "double_blocks")
        {
            string p = $"transformer_blocks.{k[1]}.";
            string rest = string.Join('.', k[2..]);
            bool img = k[2].StartsWith("img_", StringComparison.Ordinal);
            if (rest is "img_attn.qkv.weight" or "txt_attn.qkv.weight")
            {
                long n = rows / 3;
                string[] qkv = img ? ["attn.to_q", "attn.to_k", "attn.to_v"] : ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"];
                return qkv.Select((q, i) => new Flux2DiffusersPart(p + q + ".weight", i * n, 0, n)).ToArray();
            }
            return Whole(p + rest switch
            {
                "img_attn.norm.query_norm.scale" => "attn.norm_q.weight",
                "img_attn.norm.key_norm.scale" => "attn.norm_k.weight",
                "img_attn.proj.weight" => "attn.to_out.0.weight",
                "img_mlp.0.weight" => "ff.linear_in.weight",
                "img_mlp.2.weight" => "ff.linear_out.weight",
                "txt_attn.norm.query_norm.scale" => "attn.norm_added_q.weight",
                "txt_attn.norm.key_norm.scale" => "attn.norm_added_k.weight",
                "txt_attn.proj.weight" => "attn.to_add_out.weight",
                "txt_mlp.0.weight" => "ff_context.linear_in.weight",
                "txt_mlp.2.weight" => "ff_context.linear_out.weight",
                _ => throw Unknown(bflName),
            });
        }
        if (k[0] == "single_blocks")
            return Whole($"single_transformer_blocks.{k[1]}." + string.Join('.', k[2..]) switch
            {
                "linear1.weight" => "attn.to_qkv_mlp_proj.weight",
                "linear2.weight" => "attn.to_out.weight",
                "norm.query_norm.scale" => "attn.norm_q.weight",
                "norm.key_norm.scale" => "attn.norm_k.weight",
                _ => throw Unknown(bflName),
            });
        if (bflName == "final_layer.adaLN_modulation.1.weight")
        {
            long n = rows / 2; // BFL (shift, scale) -> diffusers (scale, shift)
            return [new("norm_out.linear.weight", 0, n, n), new("norm_out.linear.weight", n, 0, n)];
        }
        return Whole(bflName switch
        {
            "img_in.weight" => "x_embedder.weight",
            "txt_in.weight" => "context_embedder.weight",
            "time_in.in_layer.weight" => "time_guidance_embed.timestep_embedder.linear_1.weight",
            "time_in.out_layer.weight" => "time_guidance_embed.timestep_embedder.linear_2.weight",
            "guidance_in.in_layer.weight" => "time_guidance_embed.guidance_embedder.linear_1.weight",
            "guidance_in.out_layer.weight" => "time_guidance_embed.guidance_embedder.linear_2.weight",
            "double_stream_modulation_img.lin.weight" => "double_stream_modulation_img.linear.weight",
            "double_stream_modulation_txt.lin.weight" => "double_stream_modulation_txt.linear.weight",
            "single_stream_modulation.lin.weight" => "single_stream_modulation.linear.weight",
            "final_layer.linear.weight" => "proj_out.weight",
            _ => throw Unknown(bflName),
        });
    }

    static ArgumentException Unknown(string name) => new($"'{name}' is not a FLUX.2 transformer key", nameof(name));

    /// <summary>A diffusers tensor: its name, shape, and the BFL row blocks it is made of (in diffusers row order).</summary>
    public sealed record DiffusersTensor(string Name, long[] Shape, IReadOnlyList<(string BflName, Flux2DiffusersPart Part)> Sources);

    /// <summary>The diffusers tensors of <paramref name="c"/>, in BFL parameter order of first appearance.</summary>
    public static IReadOnlyList<DiffusersTensor> Specs(Flux2Config c)
    {
        var byName = new Dictionary<string, List<(string, Flux2DiffusersPart)>>(StringComparer.Ordinal);
        var order = new List<(string Name, long[] BflShape)>();
        foreach (var p in Flux2Specs.Parameters(c))
            foreach (var part in Parts(p.Name, p.Shape[0]))
            {
                if (!byName.TryGetValue(part.Name, out var l)) { byName[part.Name] = l = []; order.Add((part.Name, p.Shape)); }
                l.Add((p.Name, part));
            }
        return order.Select(o =>
        {
            var src = byName[o.Name].OrderBy(s => s.Item2.DiffusersStart).ToList();
            return new DiffusersTensor(o.Name, [src.Sum(s => s.Item2.Count), .. o.BflShape[1..]], src);
        }).ToList();
    }

    /// <summary>Builds the diffusers tensor <paramref name="spec"/> from BFL tensors fetched by <paramref name="bfl"/> (caller disposes the result).</summary>
    public static Tensor ToDiffusers(DiffusersTensor spec, Func<string, Tensor> bfl)
    {
        using var s = NewDisposeScope();
        var blocks = spec.Sources.Select(x => bfl(x.BflName).narrow(0, x.Part.BflStart, x.Part.Count)).ToList();
        return (blocks.Count == 1 ? blocks[0].clone() : cat(blocks, 0)).MoveToOuterDisposeScope();
    }

    /// <summary>Builds the BFL tensor <paramref name="bflName"/> from diffusers tensors fetched by <paramref name="diffusers"/>.</summary>
    public static Tensor ToBfl(string bflName, long rows, Func<string, Tensor> diffusers)
    {
        using var s = NewDisposeScope();
        var blocks = Parts(bflName, rows).OrderBy(p => p.BflStart).Select(p => diffusers(p.Name).narrow(0, p.DiffusersStart, p.Count)).ToList();
        return (blocks.Count == 1 ? blocks[0].clone() : cat(blocks, 0)).MoveToOuterDisposeScope();
    }

    /// <summary>A read-only view of a diffusers-layout checkpoint under BFL names (tensors are assembled on load).</summary>
    public static ITensorSource AsBfl(ITensorSource diffusers, Flux2Config c) => new BflView(diffusers, c);

    /// <summary>diffusers' <c>transformer/config.json</c> for <paramref name="c"/>.</summary>
    public static JsonObject DiffusersConfig(Flux2Config c) => new()
    {
        ["_class_name"] = "Flux2Transformer2DModel",
        ["_diffusers_version"] = "0.37.0",
        ["patch_size"] = 1,
        ["in_channels"] = c.InChannels,
        ["out_channels"] = null,
        ["num_layers"] = c.Depth,
        ["num_single_layers"] = c.DepthSingleBlocks,
        ["attention_head_dim"] = c.HeadDim,
        ["num_attention_heads"] = c.NumHeads,
        ["joint_attention_dim"] = c.ContextInDim,
        ["timestep_guidance_channels"] = c.TimestepEmbedDim,
        ["mlp_ratio"] = c.MlpRatio,
        ["axes_dims_rope"] = new JsonArray(c.AxesDim.Select(a => (JsonNode)a).ToArray()),
        ["rope_theta"] = c.Theta,
        ["eps"] = c.LayerNormEps,
        ["guidance_embeds"] = c.UseGuidanceEmbed,
    };

    sealed class BflView : ITensorSource
    {
        readonly ITensorSource inner;
        readonly Dictionary<string, TensorEntry> entries = new(StringComparer.Ordinal);

        public BflView(ITensorSource inner, Flux2Config c)
        {
            this.inner = inner;
            foreach (var p in Flux2Specs.Parameters(c))
            {
                var parts = Parts(p.Name, p.Shape[0]);
                if (!parts.All(x => inner.TryGetEntry(x.Name, out _))) continue; // missing: the loader reports it
                var first = inner.Entries.First(e => e.Name == parts[0].Name);
                long[] shape = [parts.Sum(x => x.Count), .. first.Shape[1..]];
                entries[p.Name] = new TensorEntry(p.Name, first.DType, shape, 0, shape.Aggregate(1L, (a, b) => a * b) * first.DType.Size(), first.File);
            }
            var used = entries.Keys.SelectMany(n => Parts(n, entries[n].Shape[0])).Select(x => x.Name).ToHashSet();
            foreach (var e in inner.Entries.Where(e => !used.Contains(e.Name))) entries[e.Name] = e; // surfaced as unexpected
            Entries = entries.Values.ToList();
        }

        public IReadOnlyList<TensorEntry> Entries { get; }
        public bool TryGetEntry(string name, out TensorEntry entry) => entries.TryGetValue(name, out entry!);

        public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
        {
            var e = entries.TryGetValue(name, out var x) ? x : throw new KeyNotFoundException($"no tensor named '{name}'");
            var loaded = new Dictionary<string, Tensor>();
            try
            {
                var t = ToBfl(name, e.Shape[0], n => loaded.TryGetValue(n, out var l) ? l : loaded[n] = inner.Load(n, dtype).DetachFromDisposeScope());
                if (device is not null && t.device != device) { var m = t.to(device); t.Dispose(); t = m; }
                return t;
            }
            finally { foreach (var l in loaded.Values) l.Dispose(); }
        }

        /// <summary>Each diffusers tensor straight into its rows of the destination (a fused qkv is read in three pieces, never assembled).</summary>
        public void ReadInto(string name, Tensor destination)
        {
            var e = entries.TryGetValue(name, out var x) ? x : throw new KeyNotFoundException($"no tensor named '{name}'");
            var parts = Parts(name, e.Shape[0]);
            if (!parts.All(p => p.DiffusersStart == 0 && inner.TryGetEntry(p.Name, out var d) && d.Shape[0] == p.Count))
            {
                ITensorSource.LoadAndCopy(this, name, destination);
                return;
            }
            foreach (var p in parts)
            {
                using var rows = destination.narrow(0, p.BflStart, p.Count);
                inner.ReadInto(p.Name, rows);
            }
        }

        public bool ConcurrentReads => inner.ConcurrentReads;

        /// <summary>Mapped when the BFL tensor is one whole diffusers tensor (a fused qkv is assembled, so copied).</summary>
        public bool TryMap(string name, out Tensor mapped)
        {
            mapped = null!;
            if (!entries.TryGetValue(name, out var e)) return false;
            var parts = Parts(name, e.Shape[0]);
            return parts.Count == 1 && parts[0].DiffusersStart == 0 && inner.TryGetEntry(parts[0].Name, out var d) && d.Shape[0] == parts[0].Count
                && inner.TryMap(parts[0].Name, out mapped);
        }

        public Tensor LoadRaw(string name) => throw new NotSupportedException("raw bytes of an assembled tensor");
        public void Dispose() => inner.Dispose();
    }
}
