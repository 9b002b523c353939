using InferenceServer.Models.Flux2;
using InferenceServer.Models.Lora;
using InferenceServer.Models.ZImage;
using InferenceServer.Tests.Flux2;
using InferenceServer.Tests.Shared;
using InferenceServer.Tests.ZImage;
using Xunit.Abstractions;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace InferenceServer.Tests.Lora;

/// <summary>
/// Every <c>*-lora-*</c> fixture: the adapter file, read by the loader the server uses (<see cref="LoraAdapter.Load"/>) onto
/// the case's model, gives <c>out_lora</c> within the case's tolerance applied per row (the serving path) and merged, and
/// scale 0 gives <c>out_base</c> bit for bit.
/// </summary>
public class LoraParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases
    {
        get
        {
            var all = new TheoryData<string>();
            foreach (var prefix in new[] { "flux2-lora-", "zimage-lora-" })
                foreach (var c in Fixtures.CaseNames(prefix)) all.Add(c);
            return all;
        }
    }

    /// <summary>One LoRA case: its base model, a forward on the case inputs, and the adapter's scale.</summary>
    sealed class LoraCase : IDisposable
    {
        readonly Flux2Case? flux;
        readonly ZImageCase? zimage;
        public Module Model { get; }
        public LoraTargets Targets { get; }
        public string AdapterPath { get; }
        public double Scale { get; }

        public LoraCase(string name)
        {
            if (name.StartsWith("flux2-", StringComparison.Ordinal))
            {
                flux = new Flux2Case(name);
                var m = flux.LoadModel();
                Model = m;
                Targets = LoraTargets.Of(m, Flux2LoraNaming.Instance);
            }
            else
            {
                zimage = new ZImageCase(name);
                var m = zimage.LoadModel();
                Model = m;
                Targets = LoraTargets.Of(m, ZImageLoraNaming.Instance);
            }
            var json = flux?.Json ?? zimage!.Json;
            AdapterPath = Path.Combine(flux?.Dir ?? zimage!.Dir, json.GetProperty("adapter").GetProperty("file").GetString()!);
            Scale = json.GetProperty("adapter").GetProperty("adapter_scale").GetDouble();
        }

        public double Atol => flux?.Atol ?? zimage!.Atol;
        public double Rtol => flux?.Rtol ?? zimage!.Rtol;
        public Tensor T(string name) => flux is not null ? flux.T(name) : zimage!.T(name + ".0");

        public Tensor Forward()
        {
            if (flux is not null)
                return ((Flux2Transformer)Model).Forward(flux.T("x_img"), flux.T("img_ids"), flux.T("timesteps"), flux.T("ctx"), flux.T("ctx_ids"));
            var latents = zimage!.T("latents");
            long gh = latents.shape[2] / 2, gw = latents.shape[3] / 2;
            using var x = ZImagePatches.Patchify(latents);
            using var y = ((ZImageTransformer)Model).Forward(x, gh, gw, zimage.T("t"), [zimage.T("cap_feats.0")]);
            return ZImagePatches.Unpatchify(y.to(ScalarType.Float32), gh, gw)[0].unsqueeze(1);
        }

        public IEnumerable<string> Merged() => (flux?.Json ?? zimage!.Json).GetProperty("merged_tensors").EnumerateObject().Select(p => p.Name);
        public Tensor Io(string name) => flux is not null ? flux.T(name) : zimage!.T(name);

        public void Dispose() { Model.Dispose(); flux?.Dispose(); zimage?.Dispose(); }
    }

    [Theory, Trait("Category", "Parity"), MemberData(nameof(Cases))]
    public void Unmerged_per_row_adapter_matches_the_reference(string caseName)
    {
        using var c = new LoraCase(caseName);
        using var scope = NewDisposeScope();
        using var adapter = LoraAdapter.Load(c.AdapterPath, c.Targets, ScalarType.Float32);
        output.WriteLine(adapter.ToString());
        using var runtime = new LoraRuntime(c.Targets);

        var baseOut = c.Forward();
        Check(caseName, "out_base", baseOut, c.T("out_base"), c.Atol, c.Rtol);
        Tensor withLora;
        using (runtime.Use([[new LoraUse(adapter, c.Scale)]])) withLora = c.Forward();
        Check(caseName, "out_lora (unmerged)", withLora, c.T("out_lora"), c.Atol, c.Rtol);

        Tensor zero;
        using (runtime.Use([[new LoraUse(adapter, 0)]])) zero = c.Forward();
        Assert.True(zero.eq(baseOut).all().item<bool>(), $"{caseName}: scale 0 must leave the base output bit for bit");
        Assert.True(c.Forward().eq(baseOut).all().item<bool>(), $"{caseName}: after the scope the model must be the base again");
    }

    [Theory, Trait("Category", "Parity"), MemberData(nameof(Cases))]
    public void Merged_adapter_matches_the_reference(string caseName)
    {
        using var c = new LoraCase(caseName);
        using var scope = NewDisposeScope();
        using var adapter = LoraAdapter.Load(c.AdapterPath, c.Targets, ScalarType.Float32);
        using var runtime = new LoraRuntime(c.Targets);
        runtime.Merge(adapter, c.Scale);
        Check(caseName, "out_lora (merged)", c.Forward(), c.T("out_lora"), c.Atol, c.Rtol);
        var state = c.Model.state_dict();
        foreach (var name in c.Merged())
            Check(caseName, name, state[name["merged.".Length..]], c.Io(name), 1e-5, 1e-5);
    }

    void Check(string caseName, string name, Tensor actual, Tensor expected, double atol, double rtol)
    {
        output.WriteLine($"{caseName} {name}: max |diff| {TensorAssert.MaxAbsDiff(actual, expected):G3} (atol {atol:G3})");
        TensorAssert.Close(actual, expected, atol, rtol, $"{caseName}/{name}");
    }
}
