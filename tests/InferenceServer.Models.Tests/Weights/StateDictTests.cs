using InferenceServer.Models.Weights;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

public class StateDictTests
{
    /// <summary>Nested names, a parameter, a persistent buffer and a non-persistent one (never in a checkpoint).</summary>
    sealed class Block : nn.Module<Tensor, Tensor>
    {
        readonly Linear proj;
        readonly Sequential mlp;
        readonly Parameter scale;
        readonly Tensor running_mean;

        public Block() : base(nameof(Block))
        {
            proj = nn.Linear(4, 3);
            mlp = nn.Sequential(nn.Linear(3, 5, hasBias: false), nn.GELU(), nn.Linear(5, 2));
            scale = nn.Parameter(ones(2));
            running_mean = zeros(3);
            RegisterComponents();
            register_buffer("cache", zeros(7), persistent: false);
        }

        public override Tensor forward(Tensor x) => mlp.forward(proj.forward(x) - running_mean) * scale;
    }

    static readonly string[] Keys = ["proj.weight", "proj.bias", "mlp.0.weight", "mlp.2.weight", "mlp.2.bias", "scale", "running_mean"];

    static List<(string, Tensor)> Checkpoint(nn.Module m, Func<string, string>? rename = null) =>
        m.state_dict().Select((kv, i) => (rename?.Invoke(kv.Key) ?? kv.Key, full(kv.Value.shape, i + 1.5f))).ToList();

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();

    static string Save(TempDir d, IEnumerable<(string, Tensor)> tensors, string name = "ckpt.safetensors")
    {
        SafetensorsWriter.Write(d[name], tensors);
        return d[name];
    }

    [Fact]
    public void The_module_exposes_the_expected_keys() => Assert.Equal(Keys.Order(), new Block().state_dict().Keys.Order());

    [Fact]
    public void Clean_checkpoint_loads_every_parameter_and_buffer()
    {
        using var d = new TempDir();
        using var scope = NewDisposeScope();
        var m = new Block();
        var ckpt = Checkpoint(m);
        using var src = SafetensorsFile.Open(Save(d, ckpt));
        var report = StateDict.Load(m, src);

        Assert.True(report.IsClean);
        Assert.Equal(7, report.Loaded);
        var sd = m.state_dict();
        foreach (var (name, t) in ckpt) Assert.Equal(t.data<float>().ToArray(), sd[name].data<float>().ToArray());
        Assert.Equal(4.5f, sd["mlp.0.weight"][0, 0].item<float>()); // state_dict order: proj.weight, proj.bias, mlp.0.weight, ...
        Assert.True(m.named_parameters().All(p => p.parameter.requires_grad)); // still trainable parameters
        Assert.Equal(ckpt.Count, report.Loaded);
    }

    [Fact]
    public void Strict_load_names_missing_unexpected_and_mismatched_keys_and_changes_nothing()
    {
        using var d = new TempDir();
        using var scope = NewDisposeScope();
        var m = new Block();
        var before = m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var ckpt = Checkpoint(m).Where(c => c.Item1 != "scale").ToList();
        ckpt.Add(("extra.weight", ones(2)));
        ckpt[0] = ("proj.weight", ones(3, 5));
        using var src = SafetensorsFile.Open(Save(d, ckpt));

        var e = Assert.Throws<InvalidDataException>(() => StateDict.Load(m, src));
        Assert.Contains(src.Path, e.Message);
        Assert.Contains("1 missing (scale)", e.Message);
        Assert.Contains("1 unexpected (extra.weight)", e.Message);
        Assert.Contains("proj.weight: module [3, 4], checkpoint [3, 5]", e.Message);
        foreach (var (k, t) in m.state_dict()) Assert.True(Same(t, before[k]), k); // untouched

        var report = StateDict.Load(m, src, strict: false);
        Assert.Equal(["scale"], report.Missing);
        Assert.Equal(["extra.weight"], report.Unexpected);
        var mm = Assert.Single(report.Mismatched);
        Assert.Equal("proj.weight", mm.Name);
        Assert.Equal([3L, 4], mm.Expected);
        Assert.Equal([3L, 5], mm.Actual);
        Assert.Equal(5, report.Loaded);
        Assert.True(Same(m.state_dict()["proj.weight"], before["proj.weight"]));
        Assert.True(Same(m.state_dict()["scale"], before["scale"]));
        Assert.Equal(ckpt.Single(c => c.Item1 == "running_mean").Item2.data<float>().ToArray(), m.state_dict()["running_mean"].data<float>().ToArray());
        Assert.Throws<InvalidDataException>(() => report.ThrowIfNotClean("block"));
    }

    [Fact]
    public void Key_map_translates_and_skips_checkpoint_keys()
    {
        using var d = new TempDir();
        using var scope = NewDisposeScope();
        var m = new Block();
        var ckpt = Checkpoint(m, k => "model." + k);
        ckpt.Add(("model.ignored", ones(1)));
        using var src = SafetensorsFile.Open(Save(d, ckpt));

        var report = StateDict.Load(m, src, keyMap: k => k == "model.ignored" ? null : k["model.".Length..]);
        Assert.True(report.IsClean);
        Assert.Equal(7, report.Loaded);
        Assert.Equal(ckpt.Single(c => c.Item1 == "model.scale").Item2.data<float>().ToArray(), m.state_dict()["scale"].data<float>().ToArray());
        var unmapped = StateDict.Load(m, src, strict: false); // without the map nothing matches
        Assert.Equal(8, unmapped.Unexpected.Count);
        Assert.Equal(Keys.Order(), unmapped.Missing.Order());
        Assert.Equal(0, unmapped.Loaded);
    }

    [Fact]
    public void BF16_file_loads_into_an_FP32_module_and_into_a_BF16_module()
    {
        using var d = new TempDir();
        using var scope = NewDisposeScope();
        var m = new Block();
        var values = m.state_dict().ToDictionary(kv => kv.Key, kv => randn(kv.Value.shape));
        SafetensorsWriter.Write(d["bf16.safetensors"], values.Keys.Select(k => new TensorSpec(k, SafetensorsDType.BF16, values[k].shape)).ToList(), s => values[s.Name].alias());
        using var src = SafetensorsFile.Open(d["bf16.safetensors"]);

        StateDict.Load(m, src);
        foreach (var (k, t) in m.state_dict())
        {
            Assert.Equal(ScalarType.Float32, t.dtype);
            Assert.True(Same(t, values[k].to(ScalarType.BFloat16).to(ScalarType.Float32)), k); // exactly the BF16 values
        }

        var half = new Block();
        StateDict.Load(half, src, dtype: ScalarType.BFloat16);
        foreach (var (k, t) in half.state_dict())
        {
            Assert.Equal(ScalarType.BFloat16, t.dtype);
            Assert.True(Same(t, values[k].to(ScalarType.BFloat16)), k);
        }
        Assert.All(half.named_parameters(), p => Assert.Equal(ScalarType.BFloat16, p.parameter.dtype));
        using var y = half.forward(ones(1, 4, dtype: ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, y.dtype);
    }
}
