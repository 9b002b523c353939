using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Flux2.Autoencoder;

public class TiledDecodeTests(ITestOutputHelper output)
{
    [Fact]
    public void Tile_spans_cover_the_axis_with_the_last_tile_flush()
    {
        Assert.Equal([(0L, 10L)], TiledDecoding.Spans(10, 16, 4));
        Assert.Equal([(0L, 16L), (8L, 16L)], TiledDecoding.Spans(24, 16, 8));
        Assert.Equal([(0L, 12L), (8L, 12L), (16L, 12L), (18L, 12L)], TiledDecoding.Spans(30, 12, 4));
    }

    /// <summary>
    /// Tiled vs whole decode of an N(0,1) token grid 8x12 (latent 16x24, image 128x192) with the tiny random-weight
    /// model, tiles of 16 latent pixels, overlap 8. Measured (seed 7): max |diff| 0.669, mean |diff| 0.051, on outputs
    /// spanning +-3.6. Nearly all of it is GroupNorm and mid-attention statistics being per tile instead of per image
    /// (random weights magnify this; the tile geometry itself is exact, see the forced-but-covering case). Bounds: 1.5x
    /// the measured values.
    /// </summary>
    [Fact]
    public void Tiled_decode_agrees_with_the_whole_decode()
    {
        using var scope = NewDisposeScope();
        using var ae = TinyVae.Create(TinyVae.Card("flux2-vae-tiny"), seed: 3);
        manual_seed(7);
        var tokens = randn(1, 128, 8, 12);
        var whole = ae.Decode(tokens);                                      // [1, 3, 128, 192]

        // A tile at least as large as the latent is the whole decode, bit for bit.
        Assert.True(ae.Decode(tokens, new VaeDecodeOptions { TileSize = 24 }).Same(whole));

        var tiled = ae.Decode(tokens, new VaeDecodeOptions { TileSize = 16, TileOverlap = 8 });
        var d = (tiled - whole).abs();
        double max = d.max().item<float>(), mean = d.mean().item<float>();
        output.WriteLine($"tile 16 overlap 8: max |diff| {max:G3}, mean |diff| {mean:G3}, output range +-{whole.abs().max().item<float>():G3}");
        Assert.Equal(whole.shape, tiled.shape);
        Assert.True(max < 1.0 && mean < 0.077, $"tiled vs whole: max {max}, mean {mean}");

        // Under a budget too small for the whole latent, Decode picks tiles by itself.
        long wholeBytes = AutoEncoderMemory.EstimateDecodeBytes(ae.Config, 1, 16, 24, 4);
        long tileBytes = AutoEncoderMemory.EstimateDecodeBytes(ae.Config, 1, 16, 16, 4);
        Assert.True(tileBytes < wholeBytes);
        var auto = ae.Decode(tokens, new VaeDecodeOptions { MemoryBudgetBytes = tileBytes, TileOverlap = 8 });
        Assert.True(auto.isfinite().all().item<bool>());
        TensorAssert.Close(auto, whole, 1.0, 0, "budget-tiled vs whole");
    }

    [Fact]
    public void Sliced_batch_decode_equals_the_batched_decode()
    {
        using var scope = NewDisposeScope();
        using var ae = TinyVae.Create(TinyVae.Card("flux2-vae-tiny"), seed: 4);
        manual_seed(8);
        var tokens = randn(2, 128, 2, 3);
        var batched = ae.Decode(tokens);
        long one = AutoEncoderMemory.EstimateDecodeBytes(ae.Config, 1, 4, 6, 4);
        var sliced = ae.Decode(tokens, new VaeDecodeOptions { MemoryBudgetBytes = one });
        TensorAssert.Close(sliced, batched, 1e-5, 1e-5, "sliced vs batched");
    }

    /// <summary>The real FLUX.2 shape: estimates for 1K-4K images and the tile the default budget picks (see the report).</summary>
    [Fact]
    public void Real_shape_estimates_fit_the_default_budget_with_tiles()
    {
        var c = AutoEncoderConfig.Flux2;
        foreach (int side in new[] { 512, 1024, 2048, 4096 })
        {
            long z = side / c.DownFactor;
            long fp32 = AutoEncoderMemory.EstimateDecodeBytes(c, 1, z, z, 4), bf16 = AutoEncoderMemory.EstimateDecodeBytes(c, 1, z, z, 2);
            int tile = AutoEncoderMemory.ChooseTile(c, 1, z, z, 4, VaeDecodeOptions.Default);
            long tiled = AutoEncoderMemory.EstimateDecodeBytes(c, 1, Math.Min(z, tile), Math.Min(z, tile), 4);
            output.WriteLine($"{side}x{side}: whole fp32 {fp32 / (double)(1L << 30):F2} GiB, bf16 {bf16 / (double)(1L << 30):F2} GiB; default budget -> tile {tile} latent px, {tiled / (double)(1L << 30):F2} GiB");
            Assert.True(tiled <= VaeDecodeOptions.Default.MemoryBudgetBytes);
        }
    }
}
