using System.Text.Json;
using InferenceServer.Models.Weights;
using InferenceServer.Models.ZImage;
using InferenceServer.Pipeline.Images;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Pipeline.Tests.Vae;

/// <summary>
/// Every zimage-vae-* case against the official Z-Image reference (FLUX.1 AE, diffusers layout): the case is a decode
/// or an encode case according to what io.safetensors holds, and every tensor it holds is an input, is compared
/// (case.json's atol/rtol; pixels exact from the reference float and within 1 from ours) or is named below as another
/// component's. The config is case.json's diffusers config, parsed as a <c>vae/config.json</c>.
/// </summary>
public class ZImageVaeParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => Fixtures.Cases("zimage-vae-");

    /// <summary>Tensors the fixtures carry for the transformer's patchify (checked by the transformer's tests).</summary>
    static readonly HashSet<string> OtherComponents = ["latent_tokens"];

    [Theory, Trait("Category", "Parity")]
    [MemberData(nameof(Cases))]
    public void Matches_the_reference(string name)
    {
        string dir = Fixtures.CaseDir(name);
        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json"))).RootElement;
        var tol = json.GetProperty("tolerance");
        double atol = tol.GetProperty("atol").GetDouble(), rtol = tol.GetProperty("rtol").GetDouble();
        var config = ZImageVaeConfig.FromJson(json.GetProperty("config").GetRawText(), name);
        using var io = SafetensorsFile.Open(Path.Combine(dir, "io.safetensors"));
        using var weights = SafetensorsFile.Open(Path.Combine(dir, "weights.safetensors"));
        using var scope = NewDisposeScope();
        using var ae = Model(config, weights);

        var inputs = new HashSet<string>();
        var ours = new Dictionary<string, Tensor>();
        bool Has(string t) => io.TryGetEntry(t, out _);
        // Both kinds hold latents and image_u8 (input of one, output of the other): the outputs decide.
        if (Has("decoded"))
        {
            // Decode: DiT latents -> VAE space -> decoder -> u8, as generate() ends.
            inputs.Add("latents");
            var latents = io.Load("latents");
            ours["z"] = ae.FromDiTLatents(latents);
            ours["decoded"] = ae.Decode(latents);
            ours["image_u8"] = Pixels.ToU8(ours["decoded"], PixelRounding.HalfToEven);
            // The per-image conversion a pipeline writes files with gives the same pixels.
            for (int b = 0; b < latents.shape[0]; b++)
                TensorAssert.Close(ImageTensors.ToUInt8Hwc(ours["decoded"][b], PixelRounding.HalfToEven), ours["image_u8"][b], 0, 0, $"{name}: ImageTensors.ToUInt8Hwc");
        }
        else if (Has("moments"))
        {
            // Encode: u8 -> [-1, 1] -> moments -> distribution -> DiT latents (diffusers img2img).
            inputs.Add("image_u8");
            inputs.Add("eps");
            ours["image"] = Pixels.ToModelInput(io.Load("image_u8"));
            ours["moments"] = ae.EncodeMoments(ours["image"]);
            using var d = ae.EncodeDistribution(ours["image"]);
            ours["mean"] = d.Mean.clone();
            ours["logvar"] = d.LogVar.clone();
            ours["std"] = d.Std.clone();
            ours["sample"] = d.Sample(io.Load("eps"));
            ours["latents"] = ae.Encode(ours["image"]);
            ours["latents_sample"] = ae.ToDiTLatents(ours["sample"]);
        }
        else Assert.Fail($"{name}: io.safetensors holds neither decoded (decode case) nor moments (encode case)");
        if (Has("raw_z"))
        {
            inputs.Add("raw_z");
            ours["raw_decoded"] = ae.DecodeLatent(io.Load("raw_z"));
        }

        foreach (var e in io.Entries)
        {
            string t = e.Name;
            if (inputs.Contains(t) || OtherComponents.Contains(t)) continue;
            Assert.True(ours.ContainsKey(t), $"{name}: io.safetensors holds '{t}', which this test does not check");
            var expected = io.Load(t);
            if (t == "image_u8") CheckPixels(name, ours[t], expected, io.Load("decoded"));
            else if (t == "image") Check(name, t, ours[t], expected, 0, 0);                  // bit-exact float32
            else if (t == "z") Check(name, t, ours[t], expected, 1e-6, 0);                   // one division and one add
            else Check(name, t, ours[t], expected, atol, rtol);
        }
    }

    /// <summary>The case's model: the file holds only the encoder or only the decoder, and every tensor of that half must load.</summary>
    static ZImageAutoencoder Model(ZImageVaeConfig config, SafetensorsFile weights)
    {
        var ae = new ZImageAutoencoder(config);
        var report = ae.LoadWeights(weights, strict: false);
        Assert.Empty(report.Unexpected);
        Assert.Empty(report.Mismatched);
        var held = weights.Entries.Select(e => e.Name.Split('.')[0]).ToHashSet();
        Assert.All(report.Missing, k => Assert.DoesNotContain(k.Split('.')[0], held));
        Assert.Equal(weights.Entries.Count, report.Loaded);
        return ae;
    }

    void Check(string c, string name, Tensor actual, Tensor expected, double atol, double rtol)
    {
        Assert.Equal(expected.dtype, actual.dtype);
        double diff = TensorAssert.MaxAbsDiff(actual, expected);
        output.WriteLine($"{c} {name} [{string.Join(",", expected.shape)}] max|diff| {diff:G3} (atol {atol}, rtol {rtol})");
        TensorAssert.Close(actual, expected, atol, rtol, $"{c}/{name}");
    }

    /// <summary>
    /// u8 <c>round(clamp(x/2 + 0.5, 0, 1) * 255)</c>, round half to even (<see cref="PixelRounding.HalfToEven"/>): exact from the
    /// reference float, within 1 from ours (a value within float error of a .5 boundary may round the other way).
    /// </summary>
    void CheckPixels(string c, Tensor actual, Tensor expected, Tensor referenceDecoded)
    {
        Assert.Equal(ScalarType.Byte, actual.dtype);
        TensorAssert.Close(Pixels.ToU8(referenceDecoded, PixelRounding.HalfToEven), expected, 0, 0, $"{c}/image_u8 (from the reference decoded)");
        double diff = TensorAssert.MaxAbsDiff(actual, expected);
        long off = (actual.to(ScalarType.Int32) != expected.to(ScalarType.Int32)).sum().item<long>();
        output.WriteLine($"{c} image_u8 [{string.Join(",", expected.shape)}] max|diff| {diff} in {off} of {expected.numel()} values; exact from the reference decoded");
        TensorAssert.Close(actual, expected, 1, 0, $"{c}/image_u8");
    }
}
