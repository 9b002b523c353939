using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Models.Quantization;

/// <summary>
/// A module that holds linear layers and takes a replacement for one of them by its registered name, so the weight
/// quantizer swaps in a <see cref="QuantizedLinear"/> through the owner's own contract instead of reflecting on its fields.
/// Every module of both families' transformers that holds a linear implements it (lists of layers are swapped by index).
/// </summary>
public interface ILinearHost
{
    /// <summary>Sets the field behind child <paramref name="name"/> (registration is the caller's); throws for a name it does not hold.</summary>
    void ReplaceLinear(string name, Module<Tensor, Tensor> layer);
}

/// <summary>The error an <see cref="ILinearHost"/> gives for a name that is not one of its linears.</summary>
public static class LinearHost
{
    public static ArgumentException Unknown(Module host, string name) =>
        new($"{host.GetType().Name} holds no linear layer '{name}'", nameof(name));
}
