using InferenceServer.Tests.Shared;
using InferenceServer.Models.Flux2.Autoencoder;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Flux2.Autoencoder;


/// <summary>Encode and decode leave no tensor behind but their results (the process-wide live-tensor count returns).</summary>
[Collection(RunAlone.Name)]
public class TensorLeakTests
{
    [Fact]
    public void Encode_and_decode_free_every_intermediate()
    {
        using var ae = TinyVae.Create(TinyVae.Card("flux2-vae-tiny"), seed: 2);
        using var image = rand(1, 3, 32, 48).mul_(2).sub_(1);
        void Round(VaeDecodeOptions? o)
        {
            using var tokens = ae.Encode(image);
            using var decoded = ae.Decode(tokens, o);
        }
        Round(null);                                                         // warm-up: lazily created module state
        long before = LiveTensors();
        for (int i = 0; i < 3; i++)
        {
            Round(null);
            Round(new VaeDecodeOptions { TileSize = 3, TileOverlap = 1 });
        }
        Assert.Equal(before, LiveTensors());
    }

    /// <summary>
    /// The process-wide live-tensor count once every unreachable tensor is finalized: tensors other tests dropped without
    /// disposing are freed by the finalizer thread at any moment, which would move the count during the measurement.
    /// </summary>
    static long LiveTensors()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return Tensor.TotalCount;
    }
}
