using InferenceServer.Models.Flux2;
using InferenceServer.Models.Quantization;
using InferenceServer.Models.Weights;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Weights;

/// <summary>
/// The load path that serves users (Flux2ModelFolder.Load: meta build, materialize, direct reads on several threads,
/// optional memory maps, the meter) against the plain reference: a module built with real storage and every tensor
/// copied from the file one by one.
/// </summary>
public class FastLoadTests
{
    static readonly Lazy<string> folder = new(() =>
    {
        string dir = System.IO.Path.Combine(Directory.CreateTempSubdirectory("fast-load-").FullName, "flux2-tiny");
        Flux2RandomModel.Write(ModelCards.Load("flux2-tiny"), Flux2Layout.Bfl, dir, ScalarType.BFloat16, seed: 3);
        return dir;
    });

    static string TransformerFile => Flux2ModelFolder.TransformerPath(folder.Value, Flux2Layout.Bfl);

    /// <summary>Every transformer tensor of the file, read the plain way.</summary>
    static Dictionary<string, Tensor> Expected(ScalarType dtype)
    {
        using var f = SafetensorsFile.Open(TransformerFile);
        return f.Entries.ToDictionary(e => e.Name, e => f.Load(e.Name, dtype));
    }

    [Theory]
    [InlineData(ScalarType.BFloat16, WeightMapping.Off)]
    [InlineData(ScalarType.BFloat16, WeightMapping.On)]
    [InlineData(ScalarType.Float32, WeightMapping.Off)]
    [InlineData(ScalarType.Float32, WeightMapping.On)]   // another dtype than stored: converted copies, never maps
    public void The_folder_loader_holds_exactly_the_file_tensors_and_runs(ScalarType dtype, WeightMapping mapping)
    {
        using var scope = NewDisposeScope();
        var meter = new LoadMeter();
        using var model = Flux2ModelFolder.Load(folder.Value, new ModelLoadOptions(dtype) { Mapping = mapping, Meter = meter });
        var expected = Expected(dtype);
        var state = model.Transformer.state_dict();
        Assert.Equal(expected.Keys.Order(), state.Keys.Order());
        foreach (var (name, t) in expected)
        {
            Assert.NotEqual(DeviceType.META, state[name].device_type);
            Assert.True(t.equal(state[name]).all().item<bool>(), $"{name} differs from the file");
        }
        // The forward reads the fields the materializer replaced: a field still on meta would throw here.
        var c = model.Transformer.Config;
        using var x = randn(1, 4, c.InChannels).to(dtype);
        using var ids = zeros([1, 4, 4], ScalarType.Int64);
        using var ctx = randn(1, 3, c.ContextInDim).to(dtype);
        using var ctxIds = zeros([1, 3, 4], ScalarType.Int64);
        using var y = model.Transformer.Forward(x, ids, tensor(new[] { 0.5f }), ctx, ctxIds);
        Assert.True(y.isfinite().all().item<bool>());

        var transformer = meter.Components.Single(m => m.Component == "transformer");
        Assert.Equal(expected.Count, transformer.Tensors);
        Assert.Equal(expected.Values.Sum(t => t.numel() * 2), transformer.Bytes);   // the file is bf16
        bool mapped = mapping == WeightMapping.On && dtype == ScalarType.BFloat16;
        Assert.Equal(mapped ? transformer.Bytes : 0, transformer.MappedBytes);
        Assert.Equal(["transformer", "vae", "text encoder", "tokenizer"], meter.Components.Select(m => m.Component));
        Assert.Contains(model.LoadReport, l => l.StartsWith("transformer ", StringComparison.Ordinal) && l.Contains(" GB", StringComparison.Ordinal));
    }

    [Fact]
    public void A_mapped_weight_written_in_memory_never_reaches_the_file()
    {
        byte[] before = File.ReadAllBytes(TransformerFile);
        using (var model = Flux2ModelFolder.Load(folder.Value, new ModelLoadOptions(ScalarType.BFloat16) { Mapping = WeightMapping.On }))
        using (no_grad())
        {
            var w = model.Transformer.state_dict()["img_in.weight"];
            w.add_(1);                                  // what a merged LoRA does: private copy-on-write pages
            Assert.True(w.isfinite().all().item<bool>());
        }
        Assert.Equal(before, File.ReadAllBytes(TransformerFile));
    }

    [Fact]
    public void Auto_maps_nothing_on_a_writable_filesystem()
    {
        Assert.False(WeightMappings.IsOnReadOnlyFilesystem(folder.Value));
        using var f = SafetensorsFile.Open(TransformerFile, new ReadOptions(WeightMapping.Auto));
        Assert.False(f.Mappable);
        Assert.False(f.TryMap(f.Entries[0].Name, out _));
        using var on = SafetensorsFile.Open(TransformerFile, new ReadOptions(WeightMapping.On));
        Assert.True(on.TryMap(on.Entries[0].Name, out var view));
        using (view) Assert.Equal(on.Entries[0].Shape, view.shape);
    }

    [Fact]
    public void A_file_whose_pages_are_dropped_after_the_load_loads_the_same_and_stays_readable()
    {
        var expected = Expected(ScalarType.BFloat16);
        using var module = new ParameterBag(expected.Select(e => (e.Key, e.Value.shape)), ScalarType.BFloat16);
        using (var f = SafetensorsFile.Open(TransformerFile, new ReadOptions(DropCopiedPages: true))) StateDict.Load(module, f);
        foreach (var (name, t) in module.state_dict()) Assert.True(expected[name].equal(t).all().item<bool>(), name);
        using var again = SafetensorsFile.Open(TransformerFile);   // dropped from the cache, not from the disk
        using var first = again.Load(again.Entries[0].Name, ScalarType.BFloat16);
        Assert.True(expected[again.Entries[0].Name].equal(first).all().item<bool>());
    }

    [Fact]
    public void Int8_loads_straight_into_8_bit_layers()
    {
        using var model = Flux2ModelFolder.Load(folder.Value, new ModelLoadOptions(ScalarType.BFloat16, WeightQuantization.Int8));
        var layers = model.Transformer.modules().OfType<QuantizedLinear>().ToList();
        Assert.NotEmpty(layers);
        Assert.All(layers, l => Assert.Equal(ScalarType.Int8, l.Weight.dtype));
        Assert.DoesNotContain(model.Transformer.parameters().Concat(model.Transformer.buffers()), t => t.device_type == DeviceType.META);
        // Each weight is the quantization of the file's tensor.
        using var f = SafetensorsFile.Open(TransformerFile);
        var path = model.Transformer.named_modules().First(m => m.module is QuantizedLinear).name;
        using var w = f.Load(path + ".weight", ScalarType.Float32);
        var (q, s) = WeightQuantizer.Quantize(w, QuantizedFormat.Int8);
        using (q) using (s)
        {
            var layer = (QuantizedLinear)model.Transformer.named_modules().First(m => m.name == path).module;
            Assert.True(q.equal(layer.Weight).all().item<bool>());
            Assert.True(s.allclose(layer.WeightScale));
        }
    }

    [Fact]
    public void A_conversion_read_in_small_pieces_equals_a_whole_conversion()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var original = randn(37, 11).to(ScalarType.BFloat16);
        SafetensorsWriter.Write(dir["t.safetensors"], [("t", original)]);
        using var f = SafetensorsFile.Open(dir["t.safetensors"]);
        var into = empty(37, 11, ScalarType.Float32);
        f.ReadInto("t", into, chunkBytes: 50);          // 25 elements a piece: 17 pieces, the last one short
        Assert.True(original.to(ScalarType.Float32).equal(into).all().item<bool>());
        var same = empty(37, 11, ScalarType.BFloat16);
        f.ReadInto("t", same);
        Assert.True(original.equal(same).all().item<bool>());
        Assert.Throws<ArgumentException>(() => f.ReadInto("t", empty(11, 37, ScalarType.BFloat16)));
    }

    [Fact]
    public void A_non_finite_tensor_read_on_several_threads_is_named()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var tensors = Enumerable.Range(0, 16).Select(i => ($"w{i:D2}", randn(64, 64))).ToList();
        tensors[11].Item2[3, 5] = tensor(float.NaN);
        SafetensorsWriter.Write(dir["n.safetensors"], tensors);
        using var module = new ParameterBag(tensors.Select(t => (t.Item1, t.Item2.shape)));
        using var f = SafetensorsFile.Open(dir["n.safetensors"]);
        Assert.True(f.ConcurrentReads);
        var e = Assert.Throws<InvalidDataException>(() => StateDict.Load(module, f));
        Assert.Contains("'w11'", e.Message);
    }

    [Fact]
    public void A_meta_module_materializes_with_uninitialised_real_storage_and_must_be_materialized_before_a_load()
    {
        using var meta = new Flux2Transformer(Flux2Config.Tiny, MetaModules.Meta, ScalarType.BFloat16);
        Assert.True(MetaModules.HasMeta(meta));
        using var f = SafetensorsFile.Open(TransformerFile);
        var e = Assert.Throws<InvalidOperationException>(() => StateDict.Load(meta, f, strict: false));
        Assert.Contains("meta", e.Message);
        MetaModules.Materialize(meta, CPU);
        Assert.False(MetaModules.HasMeta(meta));
        Assert.All(meta.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
    }

    /// <summary>A module with one parameter per name (no layers), for StateDict tests.</summary>
    sealed class ParameterBag : TorchSharp.torch.nn.Module
    {
        public ParameterBag(IEnumerable<(string Name, long[] Shape)> shapes, ScalarType dtype = ScalarType.Float32) : base(nameof(ParameterBag))
        {
            foreach (var (name, shape) in shapes) register_parameter(name, new TorchSharp.Modules.Parameter(zeros(shape, dtype), requires_grad: false));
        }
    }
}
