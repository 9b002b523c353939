using InferenceServer.Models;
using InferenceServer.Models.Flux2;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Weights;
using InferenceServer.Server.Cli;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Cli;

[Collection(SpectreConsole.Name)]
public class QuantizeCommandTests
{
    [Theory]
    [InlineData("fp8", "bfl", "flux-2-tiny-fp8.safetensors")]
    [InlineData("int8", "diffusers", "transformer/diffusion_pytorch_model.safetensors")]
    public void Quantizes_a_tiny_random_folder_that_loads_with_8_bit_weights(string to, string layout, string transformerFile)
    {
        string dir = Directory.CreateTempSubdirectory("quantize-").FullName;
        try
        {
            string src = Path.Combine(dir, "in"), dst = Path.Combine(dir, "out");
            Assert.Equal(0, CommandLine.Build().Parse(["random-checkpoint", "--preset", "tiny", "--layout", layout, "--out", src, "--seed", "3"]).Invoke());
            Assert.Equal(0, CommandLine.Build().Parse(["quantize", "--to", to, src, dst]).Invoke());

            string t = Path.Combine(dst, transformerFile);
            using (var f = SafetensorsFile.Open(t))
            {
                var expected = to == "fp8" ? SafetensorsDType.F8_E4M3 : SafetensorsDType.I8;
                Assert.Equal(expected, f["double_blocks.0.img_attn.qkv.weight"].DType);
                Assert.Equal(SafetensorsDType.F32, f["double_blocks.0.img_attn.qkv.weight_scale"].DType);
                Assert.Equal(to == "fp8" ? [] : [192L], f["double_blocks.0.img_attn.qkv.weight_scale"].Shape);
                Assert.Equal(SafetensorsDType.BF16, f["double_blocks.0.img_attn.norm.query_norm.scale"].DType);
                Assert.Contains(Flux2Quantize.MetadataKey, f.Metadata.Keys);
            }
            Assert.False(File.Exists(Path.Combine(dst, "flux-2-tiny.safetensors")), "the bf16 transformer is not copied");

            // Loads with no option, 8-bit weights detected; close to the bf16 original.
            using var q = Flux2ModelFolder.Load(dst);
            using var bf16 = Flux2ModelFolder.Load(src);
            Assert.Contains(to == "fp8" ? "fp8 weights" : "int8 weight-only", q.WeightFormat);
            using var scope = NewDisposeScope();
            manual_seed(1);
            var x = randn(1, 16, 128);
            var ids = zeros([1, 16, 4], ScalarType.Int64);
            var ctx = randn(1, 8, 192);
            var ctxIds = zeros([1, 8, 4], ScalarType.Int64);
            var a = bf16.Transformer.Forward(x, ids, tensor(new[] { 0.5f }), ctx, ctxIds).to(ScalarType.Float64).flatten();
            var b = q.Transformer.Forward(x, ids, tensor(new[] { 0.5f }), ctx, ctxIds).to(ScalarType.Float64).flatten();
            double cos = ((a * b).sum() / (a.norm() * b.norm())).item<double>();
            Assert.True(cos > 0.999, $"cosine {cos}");

            // The whole pipeline runs on the quantized folder (8-bit weights detected, no option).
            string png = Path.Combine(dir, "q.png");
            Assert.Equal(0, CommandLine.Build().Parse(["generate", "--model", dst, "--prompt", "a cat", "--size", "64x64", "--steps", "1", "--seed", "1", "--out", png]).Invoke());
            Assert.True(new FileInfo(png).Length > 0);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Quantizes_a_transformer_file_and_random_checkpoint_writes_official_fp8()
    {
        string dir = Directory.CreateTempSubdirectory("quantize-").FullName;
        try
        {
            // random-checkpoint --dtype fp8: the official-layout FP8 transformer, the rest bf16, loadable as a folder.
            string fp8 = Path.Combine(dir, "fp8");
            Assert.Equal(0, CommandLine.Build().Parse(["random-checkpoint", "--preset", "tiny", "--out", fp8, "--dtype", "fp8", "--seed", "3"]).Invoke());
            string file = Path.Combine(fp8, "flux-2-tiny-fp8.safetensors");
            Assert.True(File.Exists(file));
            using (var m = Flux2ModelFolder.Load(fp8)) Assert.StartsWith("fp8 weights (e4m3, per-tensor scale)", m.WeightFormat);

            // quantize on a transformer file: int8 output file; FP8 input is refused (already 8-bit).
            string bf16 = Path.Combine(dir, "bf16");
            Assert.Equal(0, CommandLine.Build().Parse(["random-checkpoint", "--preset", "tiny", "--out", bf16, "--seed", "3"]).Invoke());
            string outFile = Path.Combine(dir, "t-int8.safetensors");
            Assert.Equal(0, CommandLine.Build().Parse(["quantize", "--to", "int8", Path.Combine(bf16, "flux-2-tiny.safetensors"), outFile]).Invoke());
            using (var model = new Flux2Transformer(ModelCards.Load("flux2-tiny").Transformer, dtype: ScalarType.BFloat16))
            using (var src = Checkpoint.Open(outFile))
            {
                var report = Flux2Checkpoint.Load(model, src, WeightQuantization.None);
                Assert.True(report.IsClean, report.ToString());
                Assert.StartsWith("int8 weight-only", model.WeightFormat);
            }
            Assert.NotEqual(0, CommandLine.Build().Parse(["quantize", "--to", "int8", file, Path.Combine(dir, "again.safetensors")]).Invoke());
            Assert.NotEqual(0, CommandLine.Build().Parse(["quantize", "--to", "int4", outFile, Path.Combine(dir, "x.safetensors")]).Invoke());
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
