using InferenceServer.Models.Flux2;
using InferenceServer.Models.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Runtime;

/// <summary>Device selection and uploads: on the CPU everything is the identity (the CUDA branch runs only where a GPU is).</summary>
public class ComputeDeviceTests
{
    [Fact]
    public void Names_resolve_and_auto_falls_back_to_the_cpu_without_cuda()
    {
        Assert.Equal(DeviceType.CPU, ComputeDevice.Resolve("cpu").type);
        var auto = ComputeDevice.Resolve("auto");
        Assert.Equal(TorchRuntime.TryInitializeCuda() ? DeviceType.CUDA : DeviceType.CPU, auto.type);
        Assert.Throws<ArgumentException>(() => ComputeDevice.Resolve("tpu"));
        if (!TorchRuntime.TryInitializeCuda())
        {
            var e = Assert.Throws<ArgumentException>(() => ComputeDevice.Resolve("cuda"));
            Assert.Contains("LD_LIBRARY_PATH", e.Message);
        }
    }

    [Fact]
    public void Upload_to_the_cpu_keeps_values_and_casts()
    {
        using var scope = NewDisposeScope();
        var x = arange(6, ScalarType.Float32).reshape(2, 3);
        var same = ComputeDevice.Upload(x, CPU);
        Assert.Equal(x.data<float>().ToArray(), same.data<float>().ToArray());
        Assert.Equal(ScalarType.Float32, same.dtype);
        var bf = ComputeDevice.Upload(x, CPU, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, bf.dtype);
        Assert.Equal(x.data<float>().ToArray(), bf.to(ScalarType.Float32).data<float>().ToArray()); // small integers are exact in bf16
        ComputeDevice.Synchronize(CPU); // a no-op, not an error
    }

    [Fact]
    public void Transformer_accepts_inputs_from_the_host_and_loads_on_a_named_device()
    {
        using var scope = NewDisposeScope();
        var c = Flux2Config.Tiny;
        using var m = new Flux2Transformer(c, device: CPU).InitRandom(1);
        Assert.Equal(DeviceType.CPU, m.Device.type);
        var x = randn(1, 4, c.InChannels);
        var xIds = zeros(1, 4, 4, ScalarType.Int64);
        var ctx = randn(1, 3, c.ContextInDim);
        var ctxIds = zeros(1, 3, 4, ScalarType.Int64);
        var a = m.Forward(x, xIds, full(1, 0.5f), ctx, ctxIds);
        var b = m.Forward(x, xIds, full(1, 0.5f), ctx, ctxIds);
        Assert.Equal(a.data<float>().ToArray(), b.data<float>().ToArray());
    }

    [Fact]
    public void Flop_count_of_one_step_is_linear_in_batch()
    {
        var c = Flux2Config.Klein4B;
        Assert.Equal(4 * Flux2Flops.Step(c, 4096, 512), Flux2Flops.Step(c, 4096, 512, batch: 4));
        Assert.True(Flux2Flops.Attention(c, 16384, 512) > Flux2Flops.Attention(c, 4096, 512) * 10); // quadratic in tokens
    }
}
