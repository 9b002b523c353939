using System.CommandLine;
using System.Text.Json;
using InferenceServer.Models.Weights;
using InferenceServer.Server.Cli;
using static TorchSharp.torch;

namespace InferenceServer.Server.Tests.Cli;

/// <summary>Runs the real verb through the command-line root, with its output captured.</summary>
public sealed class InspectCommandTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("inspect-test-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = await CommandLine.Build().Parse(args).InvokeAsync(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    string WriteModel()
    {
        string path = Path.Combine(dir, "model.safetensors");
        TensorSpec[] specs =
        [
            new("double_blocks.0.img_attn.qkv.weight", SafetensorsDType.BF16, [9216, 3072]),
            new("double_blocks.0.img_attn.norm.query_norm.scale", SafetensorsDType.F32, [128]),
            new("final_layer.linear.weight", SafetensorsDType.F8_E4M3, [128, 3072]),
        ];
        SafetensorsWriter.Write(path, specs, s => zeros(s.Shape));
        return path;
    }

    [Fact]
    public async Task Lists_names_dtypes_shapes_sizes_and_totals()
    {
        string path = WriteModel();
        var (code, output, error) = await Run("inspect", path);

        Assert.Equal(0, code);
        Assert.Equal("", error);
        var lines = output.Split('\n');
        Assert.Contains(lines, l => l.Contains("double_blocks.0.img_attn.qkv.weight") && l.Contains("BF16") && l.Contains("[9216, 3072]") && l.Contains("54.0 MiB"));
        Assert.Contains(lines, l => l.Contains("double_blocks.0.img_attn.norm.query_norm.scale") && l.Contains("F32") && l.Contains("[128]") && l.Contains("512 B"));
        Assert.Contains(lines, l => l.Contains("final_layer.linear.weight") && l.Contains("F8_E4M3") && l.Contains("[128, 3072]") && l.Contains("384 KiB"));
        // 9216*3072 + 128 + 128*3072 = 28,704,896 parameters.
        Assert.Contains("3 tensors, 28.70 M parameters, 54.4 MiB", output);
        Assert.Contains(lines, l => l.TrimStart().StartsWith("BF16") && l.Contains("28.31 M parameters") && l.Contains("54.0 MiB"));
    }

    [Fact]
    public async Task Json_output_lists_every_tensor_of_every_checkpoint_in_a_folder()
    {
        WriteModel();
        string sharded = Path.Combine(dir, "transformer");
        TensorSpec[] specs = [new("a", SafetensorsDType.F16, [4, 4]), new("b", SafetensorsDType.F16, [4, 4]), new("c", SafetensorsDType.I64, [3])];
        SafetensorsWriter.WriteSharded(sharded, "diffusion_pytorch_model", specs, s => ones(s.Shape), maxShardBytes: 40);

        var (code, output, _) = await Run("inspect", dir, "--json");

        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output);
        var checkpoints = doc.RootElement.GetProperty("checkpoints").EnumerateArray().ToList();
        Assert.Equal(2, checkpoints.Count);
        var model = checkpoints.Single(c => c.GetProperty("path").GetString()!.EndsWith("model.safetensors"));
        Assert.Equal(28_704_896, model.GetProperty("parameter_count").GetInt64());
        Assert.Equal(3, model.GetProperty("tensor_count").GetInt32());
        Assert.Equal(9216L * 3072 * 2, model.GetProperty("bytes_per_dtype").GetProperty("BF16").GetInt64());
        var shards = checkpoints.Single(c => c.GetProperty("path").GetString()!.EndsWith(".index.json"));
        Assert.Equal(3, shards.GetProperty("files").GetArrayLength());
        Assert.Equal(["a", "b", "c"], shards.GetProperty("tensors").EnumerateArray().Select(t => t.GetProperty("name").GetString()));
        Assert.Equal([4L, 4], shards.GetProperty("tensors")[1].GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()));
        Assert.Equal(35, shards.GetProperty("parameter_count").GetInt64());
        Assert.Equal(16 * 2 * 2 + 24, shards.GetProperty("total_bytes").GetInt64());
    }

    [Fact]
    public async Task Missing_path_is_one_line_on_stderr_and_exit_code_2()
    {
        string missing = Path.Combine(dir, "nope.safetensors");
        var (code, output, error) = await Run("inspect", missing);
        Assert.Equal(2, code); // exit code 2 as every verb's user error (was 1 for inspect alone)
        Assert.Equal("", output);
        Assert.Equal($"error: {missing}: no such file or folder", error.TrimEnd('\n'));
    }

    [Fact]
    public async Task Malformed_file_is_one_line_on_stderr_and_exit_code_2()
    {
        string path = Path.Combine(dir, "bad.safetensors");
        File.WriteAllBytes(path, [.. BitConverter.GetBytes(4UL), .. "{\"a\""u8.ToArray()]);
        var (code, output, error) = await Run("inspect", path);
        Assert.Equal(2, code); // exit code 2 as every verb's user error (was 1 for inspect alone)
        Assert.Equal("", output);
        Assert.Single(error.TrimEnd('\n').Split('\n'));
        Assert.StartsWith($"error: {path}: header is not valid JSON", error);
        Assert.DoesNotContain(" at ", error);
    }

    [Theory]
    [InlineData(0, "0 parameters")]
    [InlineData(950, "950 parameters")]
    [InlineData(3_880_000_000, "3.88 B parameters")]
    [InlineData(12_500_000, "12.50 M parameters")]
    public void Parameter_counts_read_naturally(long n, string text) => Assert.Equal(text, InspectCommand.Parameters(n));

    [Theory]
    [InlineData(512, "512 B")]
    [InlineData(64L << 20, "64.0 MiB")]
    [InlineData(7_760_000_000, "7.23 GiB")]
    [InlineData(1536, "1.50 KiB")]
    public void Sizes_use_binary_units(long n, string text) => Assert.Equal(text, InspectCommand.Size(n));

    [Fact]
    public async Task Timing_loads_the_folder_warms_it_up_and_reports_each_component_as_json()
    {
        string model = Path.Combine(dir, "tiny");
        Assert.Equal(0, await CommandLine.Build().Parse(["random-checkpoint", "--preset", "tiny", "--out", model, "--seed", "2"]).InvokeAsync());
        var (code, output, error) = await Run("inspect", model, "--timing", "--json", "--device", "cpu", "--mmap", "on");
        Assert.True(code == 0, error);
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        var components = root.GetProperty("components").EnumerateArray().ToList();
        Assert.Equal(["transformer", "vae", "text encoder", "tokenizer"], components.Select(c => c.GetProperty("component").GetString()));
        var transformer = components[0];
        Assert.True(transformer.GetProperty("tensors").GetInt32() > 0);
        Assert.Equal(transformer.GetProperty("bytes").GetInt64(), transformer.GetProperty("bytes_mapped").GetInt64()); // bf16 file, bf16 model, mmap on
        Assert.True(root.GetProperty("warmup_s").GetDouble() > 0);
        Assert.True(root.GetProperty("ready_s").GetDouble() >= root.GetProperty("load_s").GetDouble());
        Assert.Equal(components.Sum(c => c.GetProperty("bytes").GetInt64()), root.GetProperty("bytes_read").GetInt64());
        Assert.True(root.GetProperty("bytes_read").GetInt64() <= root.GetProperty("checkpoint_bytes").GetInt64());
        Assert.True(root.GetProperty("huge_pages").GetBoolean());
    }
}
