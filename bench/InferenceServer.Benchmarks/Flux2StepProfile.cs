using System.Diagnostics;
using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Flux2;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Benchmarks;

/// <summary>Quick wall-clock breakdown of one step (no BenchmarkDotNet): <c>InferenceServer.Benchmarks profile CARD DEPTH SINGLE DTYPE</c>.</summary>
static class Flux2StepProfile
{
    public static void Run(string[] a)
    {
        var cfg = ModelCards.Load(a[1]).Transformer with { Depth = int.Parse(a[2]), DepthSingleBlocks = int.Parse(a[3]) };
        var dt = a[4] == "bf16" ? ScalarType.BFloat16 : ScalarType.Float32;
        using var model = new Flux2Transformer(cfg, dtype: dt);
        var (x, xIds) = Flux2Packing.BatchedPrcImg(randn(1, cfg.InChannels, 16, 16));
        var (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(randn(1, 512, cfg.ContextInDim));
        var t = full(1, 0.9f);
        for (int i = 0; i < 3; i++)
        {
            var sw = Stopwatch.StartNew();
            using (NewDisposeScope()) model.Forward(x, xIds, t, ctx, ctxIds);
            Console.WriteLine($"step {i}: {sw.Elapsed.TotalMilliseconds:F0} ms");
        }
        using (NewDisposeScope())
        {
            var q = randn(1, cfg.NumHeads, 768, cfg.HeadDim).to(dt);
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < 3; i++) functional.scaled_dot_product_attention(q, q, q);
            Console.WriteLine($"sdpa x3: {sw.Elapsed.TotalMilliseconds:F0} ms");
            var pe = Flux2Math.RopeTable(cat([ctxIds, xIds], 1), cfg.AxesDim, cfg.Theta);
            sw.Restart();
            for (int i = 0; i < 3; i++) Flux2Math.ApplyRope(q, pe);
            Console.WriteLine($"rope x3: {sw.Elapsed.TotalMilliseconds:F0} ms");
            var h = randn(1, 768, cfg.HiddenSize).to(dt);
            var w = randn(3 * cfg.HiddenSize + 2 * cfg.MlpHiddenDim, cfg.HiddenSize).to(dt);
            sw.Restart();
            for (int i = 0; i < 3; i++) functional.linear(h, w);
            Console.WriteLine($"linear1 x3: {sw.Elapsed.TotalMilliseconds:F0} ms");
            sw.Restart();
            for (int i = 0; i < 3; i++) functional.layer_norm(h, [cfg.HiddenSize], eps: 1e-6);
            Console.WriteLine($"layernorm x3: {sw.Elapsed.TotalMilliseconds:F0} ms");
        }
    }
}
