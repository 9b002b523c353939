using System.Diagnostics;
using InferenceServer.Models.Flux2;
using InferenceServer.Pipeline.Flux2;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Tests.Flux2;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Generation;

/// <summary>The whole pipeline on tiny random model folders written by <see cref="Flux2RandomModel"/>, both layouts.</summary>
public class GenerationPipelineTests(TinyModelFolders folders, ITestOutputHelper output) : IClassFixture<TinyModelFolders>
{
    internal static GenerationRequest Request(string size = "64x64", int steps = 2, long? seed = 3, int n = 1, IReadOnlyList<byte[]>? refs = null) =>
        new() { Prompt = "a red bicycle", Size = new SizeRequest(size), Steps = steps, Seed = seed, Count = n, References = refs ?? [] };

    static byte[] Png(int w, int h, int salt)
    {
        var rgb = new byte[3 * w * h];
        for (int i = 0; i < rgb.Length; i++) rgb[i] = (byte)(i * 7 + salt * 31 + i / (3 * w));
        return ImageCodec.Encode(new RgbImage(w, h, rgb), ImageFormat.Png).Bytes;
    }

    [Fact]
    public void Folder_loading_detects_layout_and_card_and_reports_each_component()
    {
        foreach (var (model, layout) in new[] { (folders.BflModel, Flux2Layout.Bfl), (folders.DiffusersModel, Flux2Layout.Diffusers) })
        {
            Assert.Equal(layout, model.Layout);
            Assert.Equal("flux2-tiny", model.Card.Name);
            Assert.Equal(5, model.LoadReport.Count);
            foreach (var line in model.LoadReport) output.WriteLine(line);
        }
    }

    [Fact]
    public void Card_is_found_from_tensor_shapes_when_the_folder_names_none()
    {
        foreach (var dir in new[] { folders.Bfl, folders.Diffusers })
        {
            string copy = CopyFolder(dir);
            try
            {
                File.Delete(Path.Combine(copy, Flux2ModelFolder.MarkerFile));
                Assert.Equal("flux2-tiny", Flux2ModelFolder.DetectCard(copy).Name);
            }
            finally { Directory.Delete(copy, true); }
        }
    }

    [Fact]
    public void Both_layouts_give_the_same_image_and_a_seed_gives_the_same_bytes()
    {
        using var bfl = new GenerationPipeline(folders.BflModel);
        using var diff = new GenerationPipeline(folders.DiffusersModel);
        var a = bfl.Generate(Request());
        var b = bfl.Generate(Request());
        var c = diff.Generate(Request());
        Assert.Equal(a.Images[0].Image.Bytes, b.Images[0].Image.Bytes);
        Assert.Equal(a.Images[0].Image.Bytes, c.Images[0].Image.Bytes);
        Assert.NotEqual(a.Images[0].Image.Bytes, bfl.Generate(Request(seed: 4)).Images[0].Image.Bytes);
    }

    [Fact]
    public void N_images_in_one_call_equal_one_call_per_seed()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var three = p.Generate(Request(n: 3, seed: 100));
        Assert.Equal([100L, 101, 102], three.Images.Select(i => i.Seed));
        for (int i = 0; i < 3; i++)
            Assert.Equal(p.Generate(Request(seed: 100 + i)).Images[0].Image.Bytes, three.Images[i].Image.Bytes);
    }

    [Fact]
    public void A_missing_seed_is_picked_and_reported_and_reproduces()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var r = p.Generate(Request(seed: null));
        Assert.Equal(r.Seed, r.Images[0].Seed);
        Assert.Equal(r.Images[0].Image.Bytes, p.Generate(Request(seed: r.Seed)).Images[0].Image.Bytes);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(10)]
    public void Edits_take_1_to_10_references_of_mixed_sizes(int count)
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var sizes = new[] { (80, 48), (64, 64), (50, 70), (96, 40), (33, 65) };
        var refs = Enumerable.Range(0, count).Select(k => Png(sizes[k % sizes.Length].Item1, sizes[k % sizes.Length].Item2, k)).ToList();
        var steps = new List<GenerationStep>();
        var r = p.Generate(Request(size: "auto", steps: 1, refs: refs), s => steps.Add(s));
        Assert.Equal(count, r.References);
        Assert.Equal((1360, 768), (r.Width, r.Height)); // auto: the first reference, 80x48 = 5:3, is nearest to 16:9
        Assert.Single(steps);
        output.WriteLine($"{count} refs: {r.Milliseconds(Stage.ReferenceEncode):F0} ms reference encode, total {r.Timings.Sum(t => t.Milliseconds):F0} ms");
    }

    [Fact]
    public void Bad_inputs_fail_with_clear_messages_before_any_model_work()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var eleven = Enumerable.Range(0, 11).Select(k => Png(32, 32, k)).ToList();
        Assert.Contains("at most 10", Assert.Throws<RequestException>(() => p.Generate(Request(refs: eleven))).Message);
        Assert.Contains("64 to 4096", Assert.Throws<RequestException>(() => p.Generate(Request(size: "10x10"))).Message);
        Assert.Contains("image 2", Assert.Throws<RequestException>(() => p.Generate(Request(refs: [Png(32, 32, 0), [1, 2, 3, 4]]))).Message);
        Assert.Contains("prompt", Assert.Throws<RequestException>(() => p.Generate(Request() with { Prompt = " " })).Message);
        // The field travels as data: the front ends report it without reading the message.
        Assert.Equal("size", Assert.Throws<RequestException>(() => p.Generate(Request(size: "abc"))).Field);
        Assert.Equal("aspect_ratio", Assert.Throws<RequestException>(() => p.Generate(Request() with { Size = new SizeRequest(null, "0:3", null) })).Field);
        Assert.Equal("n", Assert.Throws<RequestException>(() => p.Generate(Request() with { Count = 17 })).Field);
        Assert.Equal("steps", Assert.Throws<RequestException>(() => p.Generate(Request(steps: 201))).Field);
        Assert.Equal("guidance", Assert.Throws<RequestException>(() => p.Generate(Request() with { Guidance = double.NaN })).Field);
    }

    [Fact]
    public void Missing_weights_are_named()
    {
        string copy = CopyFolder(folders.Bfl);
        try
        {
            File.Delete(Path.Combine(copy, Flux2ModelFolder.AeFile));
            Assert.Contains(Flux2ModelFolder.AeFile, Assert.Throws<FileNotFoundException>(() => Flux2ModelFolder.Load(copy, ScalarType.Float32)).Message);
            File.Copy(Path.Combine(folders.Bfl, Flux2ModelFolder.AeFile), Path.Combine(copy, Flux2ModelFolder.AeFile));
            Directory.Delete(Path.Combine(copy, "text_encoder"), true);
            Assert.Contains("text_encoder", Assert.Throws<FileNotFoundException>(() => Flux2ModelFolder.Load(copy, ScalarType.Float32)).Message);
        }
        finally { Directory.Delete(copy, true); }

        string diff = CopyFolder(folders.Diffusers);
        try
        {   // a VAE missing one tensor: the message names the tensor and the file
            using (var src = InferenceServer.Models.Weights.Checkpoint.Open(Path.Combine(diff, "vae")))
            {
                var keep = src.Entries.Where(e => e.Name != "decoder.conv_in.weight").Select(e => (e.Name, src.Load(e.Name))).ToList();
                string file = Path.Combine(diff, "vae", "diffusion_pytorch_model.safetensors");
                InferenceServer.Models.Weights.SafetensorsWriter.Write(file + ".new", keep);
                foreach (var (_, t) in keep) t.Dispose();
                src.Dispose();
                File.Move(file + ".new", file, overwrite: true);
            }
            var e = Assert.Throws<InvalidDataException>(() => Flux2ModelFolder.Load(diff, ScalarType.Float32));
            Assert.Contains("decoder.conv_in.weight", e.Message);
            Assert.Contains("vae", e.Message);
        }
        finally { Directory.Delete(diff, true); }
    }

    [Fact]
    public void Steps_are_observed_and_cancellation_stops_the_loop()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var seen = new List<(int, float, long[])>();
        var r = p.Generate(Request(steps: 3), s => seen.Add((s.Step, s.Timestep, s.Latents.shape)));
        Assert.Equal([0, 1, 2], seen.Select(s => s.Item1));
        Assert.Equal(1f, seen[0].Item2);
        Assert.Equal([1L, 16, 128], seen[0].Item3);
        Assert.Equal(3, r.Timings.Count(t => t.Stage == Stage.Denoise && t.Images is [0]));
        foreach (var stage in new[] { "text_encode", "reference_encode", "decode[0]", "image_encode[0]" }) Assert.Contains(r.Timings, t => t.ToString() == stage);

        using var cts = new CancellationTokenSource();
        Assert.ThrowsAny<OperationCanceledException>(() => p.Generate(Request(steps: 4), s => { if (s.Step == 1) cts.Cancel(); }, cts.Token));
    }

    [Fact]
    public void Prompt_cache_hits_skip_the_text_encoder()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var first = p.Generate(Request() with { Prompt = "a cache test" });
        var second = p.Generate(Request() with { Prompt = "a cache test" });
        Assert.False(first.PromptCacheHit);
        Assert.True(second.PromptCacheHit);
        Assert.Equal(first.Images[0].Image.Bytes, second.Images[0].Image.Bytes);
        output.WriteLine($"text encode: miss {first.Milliseconds(Stage.TextEncode):F1} ms, hit {second.Milliseconds(Stage.TextEncode):F3} ms");
        using var small = new GenerationPipeline(folders.BflModel, new PipelineOptions { PromptCacheBytes = 1 });
        small.Generate(Request());
        Assert.Equal(0, small.PromptCacheBytes); // larger than the bound: not kept
    }

    [Fact]
    public void Reference_latents_are_cached_by_content_and_cap()
    {
        using var p = new GenerationPipeline(folders.BflModel);
        var img = Png(96, 64, 9);
        var first = p.Generate(Request(steps: 1, refs: [img]));
        long held = p.ReferenceCacheBytes;
        Assert.Equal(128L * 4 * 6 * 4, held);                       // one [128, 4, 6] float32 latent
        var again = p.Generate(Request(steps: 1, refs: [img]));
        Assert.Equal(held, p.ReferenceCacheBytes);                   // a hit adds nothing
        Assert.Equal(first.Images[0].Image.Bytes, again.Images[0].Image.Bytes);
        p.Generate(Request(steps: 1, refs: [img, Png(64, 64, 1)])); // several references: another cap, another key
        Assert.Equal(held * 2 + 128L * 4 * 4 * 4, p.ReferenceCacheBytes);
        output.WriteLine($"reference encode: miss {first.Milliseconds(Stage.ReferenceEncode):F1} ms, hit {again.Milliseconds(Stage.ReferenceEncode):F1} ms");
    }

    [Fact]
    public void Fixture_edit_case_runs_through_the_pipeline_sampling_core()
    {
        int ran = 0;
        foreach (string caseName in Fixtures.Cases("flux2-denoise"))
        {
            using var c = new Flux2Case(caseName);
            if (!c.Section("outputs").Contains("edit_final")) continue;
            using var scope = NewDisposeScope();
            using var model = c.LoadModel();
            var ts = FlowSchedule.GetSchedule(c.Shape("num_steps"), c.Shape("L_img"));
            var final = FlowSampler.Denoise(model, c.T("x_init"), c.T("img_ids"), c.T("ctx"), c.T("ctx_ids"), ts, 1f, c.T("ref_tokens"), c.T("ref_ids"));
            TensorAssert.Close(final, c.T("edit_final"), c.Atol, c.Rtol, $"{caseName}/edit_final");
            ran++;
            output.WriteLine($"{caseName} edit_final via FlowSampler.Denoise (SamplingLoop): max |diff| {TensorAssert.MaxAbsDiff(final, c.T("edit_final")):G3}");
        }
        Assert.True(ran > 0, "no flux2-denoise fixture case with an edit run");
    }

    static string CopyFolder(string dir)
    {
        string copy = Directory.CreateTempSubdirectory("pipeline-copy-").FullName;
        foreach (var f in Directory.GetFiles(dir, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(copy, Path.GetRelativePath(dir, f));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(f, target);
        }
        return copy;
    }
}
