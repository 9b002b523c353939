using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using InferenceServer.Models;
using InferenceServer.Models.Runtime;
using InferenceServer.Models.Weights;
using InferenceServer.Pipeline.Generation;
using Spectre.Console;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inspect --timing DIR</c>: loads a model folder the way <c>serve</c> does, then runs the same warm-up (the smallest size,
/// one step), and reports where the time to ready went, per component: building the modules, reading the tensors into
/// them, the finite check, wall time, throughput, and the process's resident memory after each. The load benchmark
/// (bench/load) runs it cold and warm next to the <c>cat</c> floor.
/// </summary>
internal static class LoadTimingReport
{
    public static int Run(int readThreads, string dir, string weights, string deviceName, WeightMapping mapping, bool json, TextWriter output)
    {
        if (readThreads is < 1 or > 64) throw new ArgumentException($"--read-threads {readThreads}: 1 to 64");
        StateDict.ReadThreads = readThreads;
        if (!Directory.Exists(dir)) throw new ArgumentException($"--timing: {dir} is not a model folder");
        var device = ComputeDevice.Resolve(deviceName);
        var (dtype, quantization) = WeightsChoice.Parse(weights);
        long checkpointBytes = Checkpoint.FileBytes(dir);
        long available = PageCache.AvailableBytes;
        bool keepsPages = PageCache.CanKeep(checkpointBytes); // what the loader decides (ModelLoadOptions.ReadOptionsFor)
        var total = Stopwatch.StartNew();
        var (backend, meter) = LoadProgressBar.Run(m => ModelFamilies.Load(dir, new ModelLoadOptions(dtype, quantization) { Device = device, Meter = m, Mapping = mapping }));
        var loaded = total.Elapsed;
        using var pipeline = new GenerationPipeline(backend);
        var warmUp = TimeSpan.FromMilliseconds(pipeline.WarmUp());
        var ready = total.Elapsed;
        var components = meter.Components;
        var report = new JsonObject
        {
            ["folder"] = Path.GetFullPath(dir),
            ["family"] = backend.Family,
            ["weights"] = weights,
            ["device"] = device.ToString(),
            ["huge_pages"] = TorchRuntime.HugePages,
            ["mmap"] = mapping.ToString().ToLowerInvariant(),
            ["bytes_mapped"] = components.Sum(c => c.MappedBytes),
            ["read_threads"] = StateDict.ReadThreads,
            ["drops_copied_pages"] = !keepsPages,
            ["checkpoint_bytes"] = checkpointBytes,
            ["bytes_read"] = components.Sum(c => c.Bytes),
            ["components"] = new JsonArray([.. components.Select(c => (JsonNode)new JsonObject
            {
                ["component"] = c.Component,
                ["path"] = c.Path,
                ["tensors"] = c.Tensors,
                ["bytes"] = c.Bytes,
                ["bytes_mapped"] = c.MappedBytes,
                ["build_s"] = Round(c.Build.TotalSeconds),
                ["read_s"] = Round(c.Read.TotalSeconds),
                ["check_s"] = Round(c.Check.TotalSeconds),
                ["total_s"] = Round(c.Total.TotalSeconds),
                ["rss_bytes"] = c.RssBytes,
                ["peak_rss_bytes"] = c.PeakRssBytes,
            })]),
            ["load_s"] = Round(loaded.TotalSeconds),
            ["warmup_s"] = Round(warmUp.TotalSeconds),
            ["ready_s"] = Round(ready.TotalSeconds),
            ["peak_rss_bytes"] = ProcessMemory.Peak,
        };
        if (json)
        {
            output.WriteLine(report.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output) });
        if (!ReferenceEquals(output, Console.Out) || Console.IsOutputRedirected) console.Profile.Width = 200;
        console.WriteLine($"{Path.GetFullPath(dir)}: {backend.Family}, {weights} on {device}; huge pages {(TorchRuntime.HugePages ? "on" : "off")}, {StateDict.ReadThreads} reading threads, mmap {mapping.ToString().ToLowerInvariant()}");
        var table = new Table().AddColumns("component", "tensors", "read", "mapped", "build s", "read s*", "check s*", "wall s", "GB/s", "RSS after", "peak RSS");
        for (int i = 1; i < table.Columns.Count; i++) table.Columns[i].RightAligned();
        foreach (var c in components)
            table.AddRow(c.Component, c.Tensors.ToString(CultureInfo.InvariantCulture), GB(c.Bytes), GB(c.MappedBytes), S(c.Build), S(c.Read), S(c.Check), S(c.Total),
                (c.BytesPerSecond / 1e9).ToString("F2", CultureInfo.InvariantCulture), GB(c.RssBytes), GB(c.PeakRssBytes));
        console.Write(table);
        console.WriteLine("* summed over the reading threads");
        if (!keepsPages && components.Any(c => c.Bytes > c.MappedBytes)) console.WriteLine($"copied pages dropped from the page cache: {GB(available)} available at the start, less than the {GB(2 * checkpointBytes)} a copied model and its cached files need");
        console.WriteLine($"read {GB(components.Sum(c => c.Bytes))} of the folder's {GB(checkpointBytes)} of checkpoints");
        console.WriteLine($"load {S(loaded)} s (components {S(TimeSpan.FromTicks(components.Sum(c => c.Total.Ticks)))} s), warm-up {S(warmUp)} s (smallest size, 1 step): ready after {S(ready)} s; peak RSS {GB(ProcessMemory.Peak)}");
        return 0;
    }

    static double Round(double seconds) => Math.Round(seconds, 3);
    static string S(TimeSpan t) => t.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture);
    static string GB(long bytes) => (bytes / 1e9).ToString("F2", CultureInfo.InvariantCulture) + " GB";
}
