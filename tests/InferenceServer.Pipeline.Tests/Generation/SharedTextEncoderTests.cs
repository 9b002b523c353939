using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Qwen3;
using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Flux2;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.ZImage;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Generation;

/// <summary>
/// A tiny FLUX.2 and a tiny Z-Image folder written with the same seed hold byte-identical Qwen3 text encoders (as klein 4B
/// and Z-Image-Turbo both ship Qwen3-4B): loaded through one <see cref="SharedTextEncoders"/>, the encoder is loaded once,
/// each family still gets exactly its own features, and it lives until the last model using it is disposed.
/// </summary>
public sealed class SharedTextEncoderTests : IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("shared-te-").FullName;

    public void Dispose() => Directory.Delete(root, recursive: true);

    [Fact]
    public void Identical_text_encoders_load_once_and_serve_each_family_its_own_layers()
    {
        string flux = Path.Combine(root, "flux"), zimage = Path.Combine(root, "zimage"), other = Path.Combine(root, "zimage-other");
        Flux2RandomModel.Write(ModelCards.Load("flux2-tiny"), Flux2Layout.Bfl, flux, ScalarType.Float32, seed: 3);
        ZImageRandomModel.Write(ZImageModelCard.Load("zimage-tiny"), zimage, ScalarType.Float32, seed: 3);
        ZImageRandomModel.Write(ZImageModelCard.Load("zimage-tiny"), other, ScalarType.Float32, seed: 4);
        Assert.Equal(SharedTextEncoders.ContentHash(Path.Combine(flux, "text_encoder")), SharedTextEncoders.ContentHash(Path.Combine(zimage, "text_encoder")));

        var options = new ModelLoadOptions(ScalarType.Float32);
        using var fluxAlone = (Flux2Backend)ModelFamilies.Load(flux, options);
        using var zimageAlone = (ZImageBackend)ModelFamilies.Load(zimage, options);

        var shared = new SharedTextEncoders();
        var sharedOptions = options with { SharedTextEncoders = shared };
        var fluxShared = (Flux2Backend)ModelFamilies.Load(flux, sharedOptions);
        var zimageShared = (ZImageBackend)ModelFamilies.Load(zimage, sharedOptions);
        using var otherShared = (ZImageBackend)ModelFamilies.Load(other, sharedOptions);   // different weights: its own encoder
        Assert.Same(fluxShared.Model.TextEncoder, zimageShared.Model.TextEncoder);
        Assert.NotSame(zimageShared.Model.TextEncoder, otherShared.Model.TextEncoder);
        Assert.Equal([2, 1], shared.Users.Order().Reverse());
        Assert.Contains(zimageShared.LoadReport, l => l.Contains("shared, not loaded again", StringComparison.Ordinal));

        using (var scope = NewDisposeScope())
        {
            foreach (var prompt in new[] { "a cat", "" })
            {
                Assert.Equal(0.0, (fluxShared.EncodePrompt(prompt) - fluxAlone.EncodePrompt(prompt)).abs().max().item<float>());
                Assert.Equal(0.0, (zimageShared.EncodePrompt(prompt) - zimageAlone.EncodePrompt(prompt)).abs().max().item<float>());
            }
        }

        fluxShared.Dispose();                                                     // the Z-Image model still uses it
        using (var scope = NewDisposeScope()) Assert.Equal(2, (int)zimageShared.EncodePrompt("a dog").dim());
        Assert.Equal([1, 1], shared.Users);
        zimageShared.Dispose();
        Assert.Equal([1], shared.Users);
    }
}
