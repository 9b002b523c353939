using System.Text.RegularExpressions;
using InferenceServer.Models.Weights;
using static TorchSharp.torch;

namespace InferenceServer.Models.Flux2.Autoencoder;

/// <summary>
/// The one BFL &lt;-&gt; diffusers (<c>AutoencoderKLFlux2</c>) translation of autoencoder state-dict keys, read in either
/// direction from a single table (the renames of diffusers' <c>convert_flux2_to_diffusers.py</c>):
/// <c>encoder.quant_conv</c> / <c>decoder.post_quant_conv</c> move to the top level, <c>norm_out</c> -> <c>conv_norm_out</c>,
/// <c>down.i.block.j</c> -> <c>down_blocks.i.resnets.j</c>, <c>up.i</c> -> <c>up_blocks.(L-1-i)</c> (index reversed),
/// <c>downsample</c>/<c>upsample</c> -> <c>downsamplers.0</c>/<c>upsamplers.0</c>, <c>mid.block_1/2</c> ->
/// <c>mid_block.resnets.0/1</c>, <c>mid.attn_1</c> -> <c>mid_block.attentions.0</c> with <c>norm</c> -> <c>group_norm</c>,
/// <c>q/k/v</c> -> <c>to_q/to_k/to_v</c>, <c>proj_out</c> -> <c>to_out.0</c>, and <c>nin_shortcut</c> -> <c>conv_shortcut</c>.
/// Attention weights are 1x1 convs <c>[C, C, 1, 1]</c> in BFL and Linear <c>[C, C]</c> in diffusers.
/// <c>bn.*</c> keeps its name (diffusers' converter does not carry <c>bn.num_batches_tracked</c>; it is unused).
/// </summary>
public static class AutoEncoderKeyMap
{
    // (BFL, diffusers). {i}: level index as in BFL; {r}: the reversed up-level index L-1-i; {j}: block; {m}: encoder|decoder.
    static readonly (string Bfl, string Diffusers)[] Table =
    [
        ("encoder.quant_conv.", "quant_conv."),
        ("decoder.post_quant_conv.", "post_quant_conv."),
        ("{m}.norm_out.", "{m}.conv_norm_out."),
        ("encoder.down.{i}.block.{j}.nin_shortcut.", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut."),
        ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
        ("encoder.down.{i}.downsample.", "encoder.down_blocks.{i}.downsamplers.0."),
        ("decoder.up.{i}.block.{j}.nin_shortcut.", "decoder.up_blocks.{r}.resnets.{j}.conv_shortcut."),
        ("decoder.up.{i}.block.{j}.", "decoder.up_blocks.{r}.resnets.{j}."),
        ("decoder.up.{i}.upsample.", "decoder.up_blocks.{r}.upsamplers.0."),
        ("{m}.mid.block_1.", "{m}.mid_block.resnets.0."),
        ("{m}.mid.block_2.", "{m}.mid_block.resnets.1."),
        ("{m}.mid.attn_1.norm.", "{m}.mid_block.attentions.0.group_norm."),
        ("{m}.mid.attn_1.q.", "{m}.mid_block.attentions.0.to_q."),
        ("{m}.mid.attn_1.k.", "{m}.mid_block.attentions.0.to_k."),
        ("{m}.mid.attn_1.v.", "{m}.mid_block.attentions.0.to_v."),
        ("{m}.mid.attn_1.proj_out.", "{m}.mid_block.attentions.0.to_out.0."),
    ];

    static readonly (Regex Bfl, Regex Diffusers)[] Patterns = Table.Select(e => (Compile(e.Bfl), Compile(e.Diffusers))).ToArray();

    /// <summary>BFL key -> diffusers key for a model with <paramref name="numLevels"/> levels (<c>len(ch_mult)</c>).</summary>
    public static string ToDiffusers(string bflKey, int numLevels) => Map(bflKey, numLevels, toDiffusers: true);

    /// <summary>Diffusers key -> BFL key for a model with <paramref name="numLevels"/> levels (<c>len(ch_mult)</c>).</summary>
    public static string ToBfl(string diffusersKey, int numLevels) => Map(diffusersKey, numLevels, toDiffusers: false);

    /// <summary>True when <paramref name="keys"/> look like a diffusers <c>AutoencoderKLFlux2</c> state dict.</summary>
    public static bool IsDiffusersLayout(IEnumerable<string> keys) =>
        keys.Any(k => k.StartsWith("decoder.up_blocks.", StringComparison.Ordinal) || k.StartsWith("encoder.down_blocks.", StringComparison.Ordinal)
                      || k.StartsWith("post_quant_conv.", StringComparison.Ordinal) || k.StartsWith("quant_conv.", StringComparison.Ordinal));

    /// <summary>
    /// A diffusers-layout source seen with BFL keys and shapes (attention weights as <c>[C, C, 1, 1]</c>), for
    /// <see cref="StateDict.Load"/>. Reads through to <paramref name="diffusers"/>, which it does not dispose.
    /// </summary>
    public static ITensorSource AsBfl(ITensorSource diffusers, int numLevels) => new RenamedSource(diffusers, numLevels);

    /// <summary>Whole state dict BFL -> diffusers (attention weights as Linear <c>[C, C]</c>). The tensors are new views.</summary>
    public static Dictionary<string, Tensor> ToDiffusers(IEnumerable<KeyValuePair<string, Tensor>> bfl, int numLevels) =>
        bfl.ToDictionary(kv => ToDiffusers(kv.Key, numLevels), kv => ToDiffusersTensor(kv.Key, kv.Value));

    /// <summary>Whole state dict diffusers -> BFL (attention weights as 1x1 convs). The tensors are new views.</summary>
    public static Dictionary<string, Tensor> ToBfl(IEnumerable<KeyValuePair<string, Tensor>> diffusers, int numLevels) =>
        diffusers.Select(kv => (Key: ToBfl(kv.Key, numLevels), kv.Value)).ToDictionary(e => e.Key, e => ToBflTensor(e.Key, e.Value));

    /// <summary>A BFL attention weight <c>[C, C, 1, 1]</c> as diffusers' Linear <c>[C, C]</c>; other tensors unchanged (new handle).</summary>
    public static Tensor ToDiffusersTensor(string bflKey, Tensor t) =>
        IsAttentionWeight(bflKey) && t.dim() == 4 ? t.view(t.shape[0], t.shape[1]) : t.alias();

    /// <summary>A diffusers Linear attention weight <c>[C, C]</c> as BFL's 1x1 conv <c>[C, C, 1, 1]</c>; others unchanged (new handle).</summary>
    public static Tensor ToBflTensor(string bflKey, Tensor t) =>
        IsAttentionWeight(bflKey) && t.dim() == 2 ? t.view(t.shape[0], t.shape[1], 1, 1) : t.alias();

    internal static bool IsAttentionWeight(string bflKey) => Regex.IsMatch(bflKey, @"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$");

    static string Map(string key, int numLevels, bool toDiffusers)
    {
        for (int n = 0; n < Table.Length; n++)
        {
            var (from, to) = toDiffusers ? (Patterns[n].Bfl, Table[n].Diffusers) : (Patterns[n].Diffusers, Table[n].Bfl);
            var m = from.Match(key);
            if (!m.Success) continue;
            string Group(string g) => m.Groups[g].Success ? m.Groups[g].Value : "";
            // i and r are each other's mirror: r = L-1-i and i = L-1-r.
            string i = m.Groups["i"].Success ? Group("i") : m.Groups["r"].Success ? (numLevels - 1 - int.Parse(Group("r"))).ToString() : "";
            string r = m.Groups["r"].Success ? Group("r") : m.Groups["i"].Success ? (numLevels - 1 - int.Parse(Group("i"))).ToString() : "";
            return to.Replace("{m}", Group("m")).Replace("{i}", i).Replace("{r}", r).Replace("{j}", Group("j")) + Group("rest");
        }
        return key;
    }

    static Regex Compile(string template) =>
        new("^" + Regex.Escape(template).Replace(@"\{m}", "(?<m>encoder|decoder)").Replace(@"\{i}", @"(?<i>\d+)")
            .Replace(@"\{r}", @"(?<r>\d+)").Replace(@"\{j}", @"(?<j>\d+)") + "(?<rest>.*)$", RegexOptions.CultureInvariant);
}

/// <summary>A diffusers VAE checkpoint presented under BFL names and shapes.</summary>
file sealed class RenamedSource : ITensorSource
{
    readonly ITensorSource inner;
    readonly Dictionary<string, (TensorEntry Entry, string InnerName)> byName = new(StringComparer.Ordinal);

    public RenamedSource(ITensorSource inner, int numLevels)
    {
        this.inner = inner;
        foreach (var e in inner.Entries)
        {
            string key = AutoEncoderKeyMap.ToBfl(e.Name, numLevels);
            long[] shape = AutoEncoderKeyMap.IsAttentionWeight(key) && e.Shape.Length == 2 ? [e.Shape[0], e.Shape[1], 1, 1] : e.Shape;
            if (!byName.TryAdd(key, (e with { Name = key, Shape = shape }, e.Name)))
                throw new InvalidDataException($"checkpoint keys '{byName[key].InnerName}' and '{e.Name}' both map to '{key}'");
        }
        Entries = byName.Values.Select(v => v.Entry).ToList();
    }

    public IReadOnlyList<TensorEntry> Entries { get; }

    public bool TryGetEntry(string name, out TensorEntry entry)
    {
        bool found = byName.TryGetValue(name, out var v);
        entry = v.Entry;
        return found;
    }

    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        var (entry, innerName) = byName[name];
        using var t = inner.Load(innerName, dtype, device);
        return t.view(entry.Shape);
    }

    public Tensor LoadRaw(string name) => inner.LoadRaw(byName[name].InnerName);

    public void Dispose() { }
}
