using InferenceServer.Models.Flux2.Autoencoder;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Flux2;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Flux2;

/// <summary>The sampler's contract beyond the numbers: callbacks, cancellation, bounded memory, input validation.</summary>
public class FlowSamplerTests(ITestOutputHelper output)
{
    static (Flux2Transformer Model, Tensor X, Tensor Ids, Tensor Ctx, Tensor CtxIds) Tiny()
    {
        var model = new Flux2Transformer(Flux2Config.Tiny).InitRandom(11);
        var (x, ids) = Flux2Packing.BatchedPrcImg(randn(1, 128, 4, 6));
        var (ctx, ctxIds) = Flux2Packing.BatchedPrcTxt(randn(1, 5, Flux2Config.Tiny.ContextInDim));
        return (model, x, ids, ctx, ctxIds);
    }

    [Fact]
    public void Callback_sees_every_step_and_live_tensors_do_not_grow()
    {
        using var scope = NewDisposeScope();
        var (model, x, ids, ctx, ctxIds) = Tiny();
        using var _ = model;
        var ts = FlowSchedule.GetSchedule(12, (int)x.shape[1]);
        var live = new List<long>();
        var seen = new List<(int, float, float)>();
        using var result = FlowSampler.Denoise(model, x, ids, ctx, ctxIds, ts, 1f, onStep: s =>
        {
            seen.Add((s.Index, s.TCurr, s.TPrev));
            Assert.Equal(x.shape, s.Latents.shape);
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        });
        Assert.Equal(Enumerable.Range(0, 12).Select(i => (i, ts[i], ts[i + 1])), seen);
        output.WriteLine("live tensors at each callback: " + string.Join(", ", live));
        Assert.All(live.Skip(1), n => Assert.Equal(live[1], n));
        Assert.False(x.Handle == result.Handle);
    }

    [Fact]
    public void Cancellation_requested_in_the_callback_stops_after_that_step()
    {
        using var scope = NewDisposeScope();
        var (model, x, ids, ctx, ctxIds) = Tiny();
        using var _ = model;
        using var cts = new CancellationTokenSource();
        int calls = 0;
        Assert.Throws<OperationCanceledException>(() => FlowSampler.Denoise(model, x, ids, ctx, ctxIds, FlowSchedule.GetSchedule(4, 24), 1f,
            onStep: s => { calls++; if (s.Index == 1) cts.Cancel(); }, cancellationToken: cts.Token));
        Assert.Equal(2, calls);
        Assert.Throws<OperationCanceledException>(() => FlowSampler.DenoiseCfg(model, x, ids, cat([ctx, ctx]), cat([ctxIds, ctxIds]), FlowSchedule.GetSchedule(4, 24), 4f,
            cancellationToken: cts.Token));
    }

    [Fact]
    public void Bad_arguments_are_rejected()
    {
        using var scope = NewDisposeScope();
        var (model, x, ids, ctx, ctxIds) = Tiny();
        using var _ = model;
        Assert.Throws<ArgumentException>(() => FlowSampler.Denoise(model, x, ids, ctx, ctxIds, [1f], 1f));
        Assert.Throws<ArgumentException>(() => FlowSampler.Denoise(model, x, ids, ctx, ctxIds, [1f, 0f], 1f, refTokens: x));
        Assert.Throws<ArgumentException>(() => FlowSampler.DenoiseCfg(model, x, ids, ctx, ctxIds, [1f, 0f], 4f));
        Assert.Throws<ArgumentOutOfRangeException>(() => FlowSchedule.GetSchedule(0, 256));
        Assert.Throws<ArgumentException>(() => LatentTokens.Patchify(zeros(1, 32, 5, 4)));
    }

    [Fact]
    public void Schedule_reproduces_the_4300_discontinuity()
    {
        // Above 4300 image tokens mu ignores the step count (the reference's behaviour, kept on purpose).
        Assert.Equal(FlowSchedule.ComputeEmpiricalMu(4301, 4), FlowSchedule.ComputeEmpiricalMu(4301, 50));
        Assert.NotEqual(FlowSchedule.ComputeEmpiricalMu(4300, 4), FlowSchedule.ComputeEmpiricalMu(4300, 50));
    }
}
