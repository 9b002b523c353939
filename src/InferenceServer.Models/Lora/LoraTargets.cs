using InferenceServer.Models.Quantization;
using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Lora;

/// <summary>Shape of an adaptable linear: weight [Out, In].</summary>
public readonly record struct LoraLayerShape(long Out, long In);

/// <summary>
/// The adaptable linears of one loaded transformer and every adapter key that reaches them: a family's
/// <see cref="ILoraNaming"/> aliases expanded with the prefixes published files use (ComfyUI's approach: mangle every known
/// name and look the file's key up, rather than parse the key). <see cref="LoraScheme.Native"/> names are reached as
/// <c>diffusion_model.N</c>, <c>base_model.model.N</c>, <c>lora_unet_</c> + N with '.' -> '_', and bare N;
/// <see cref="LoraScheme.Diffusers"/> names as <c>transformer.N</c>.
/// </summary>
public sealed class LoraTargets
{
    readonly Dictionary<string, List<LoraPiece>> keys = new(StringComparer.Ordinal);
    readonly Dictionary<string, LoraLayerShape> layers = new(StringComparer.Ordinal);
    readonly List<(string Path, Module<TorchSharp.torch.Tensor, TorchSharp.torch.Tensor> Layer)> modules = [];

    LoraTargets(ILoraNaming naming) => Naming = naming;

    /// <summary>The family naming the keys were built from.</summary>
    public ILoraNaming Naming { get; }

    /// <summary>Adaptable linears by module path, in model order.</summary>
    public IReadOnlyDictionary<string, LoraLayerShape> Layers => layers;

    /// <summary>The adaptable layers themselves (a <see cref="Linear"/> or a <see cref="QuantizedLinear"/>), in model order.</summary>
    internal IReadOnlyList<(string Path, Module<TorchSharp.torch.Tensor, TorchSharp.torch.Tensor> Layer)> Modules => modules;

    /// <summary>Every linear (float or 8-bit) of <paramref name="transformer"/> that <paramref name="naming"/> calls adaptable.</summary>
    public static LoraTargets Of(Module transformer, ILoraNaming naming)
    {
        var t = new LoraTargets(naming);
        foreach (var (path, module) in transformer.named_modules())
        {
            LoraLayerShape shape;
            if (module is Linear linear) shape = new(linear.weight!.shape[0], linear.weight.shape[1]);
            else if (module is QuantizedLinear q) shape = new(q.OutFeatures, q.InFeatures);
            else continue;
            if (!naming.Adaptable(path)) continue;
            t.layers[path] = shape;
            t.modules.Add((path, (Module<TorchSharp.torch.Tensor, TorchSharp.torch.Tensor>)module));
            foreach (var alias in naming.Aliases(path, shape.Out))
                foreach (var key in Keys(alias))
                {
                    if (!t.keys.TryGetValue(key, out var pieces)) t.keys[key] = pieces = [];
                    if (!pieces.Contains(alias.Piece)) pieces.Add(alias.Piece);
                }
        }
        return t;
    }

    /// <summary>The pieces a module key (the part before <c>.lora_A</c>, <c>.alpha</c>, ...) adds into, or null.</summary>
    public IReadOnlyList<LoraPiece>? Resolve(string moduleKey) => keys.TryGetValue(moduleKey, out var p) ? p : null;

    /// <summary>The key of <paramref name="name"/> under <paramref name="scheme"/> as a file of <paramref name="style"/> writes it.</summary>
    public static string Key(string name, LoraScheme scheme, LoraKeyStyle style) => (scheme, style) switch
    {
        (LoraScheme.Diffusers, _) => "transformer." + name,
        (_, LoraKeyStyle.Kohya) => "lora_unet_" + name.Replace('.', '_'),
        _ => "diffusion_model." + name,
    };

    static IEnumerable<string> Keys(LoraAlias a) => a.Scheme == LoraScheme.Diffusers
        ? ["transformer." + a.Module]
        : ["diffusion_model." + a.Module, "base_model.model." + a.Module, "lora_unet_" + a.Module.Replace('.', '_'), a.Module];
}

/// <summary>How a file spells its keys: <c>prefix.module.lora_A/B.weight</c> or kohya's <c>lora_unet_module.lora_down/up.weight</c> + <c>.alpha</c>.</summary>
public enum LoraKeyStyle { Peft, Kohya }
