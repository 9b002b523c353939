using System.CommandLine;
using System.Text.Json;
using InferenceServer.Models.Runtime;
using InferenceServer.Models.Weights;
using Spectre.Console;

using InferenceServer.Models;
using InferenceServer.Pipeline.Generation;

namespace InferenceServer.Server.Cli;

/// <summary>
/// <c>inference-server inspect PATH [--json]</c> (or <c>inspect --timing DIR</c>, see <see cref="LoadTimingReport"/>): lists the tensors of a safetensors file, a sharded index, or every
/// checkpoint found under a folder (name, dtype, shape, size), with totals per checkpoint: tensor count, parameter
/// count and bytes per dtype. Reads headers only.
/// </summary>
internal static class InspectCommand
{
    /// <summary>Above this many checkpoints (or this many bytes) a progress bar shows while headers are read, on a terminal.</summary>
    const int ProgressMinFiles = 8;
    const long ProgressMinBytes = 4L << 30;

    public static Command Create()
    {
        var path = new Argument<string>("path") { Description = "A .safetensors file, a *.safetensors.index.json, or a folder (searched recursively)" };
        var json = new Option<bool>("--json") { Description = "Print the listing (or the timing) as JSON" };
        var timing = new Option<bool>("--timing") { Description = "Load the model folder as serve does, run its warm-up, and report the time and memory of each component" };
        var dtype = new Option<string>("--dtype") { Description = "With --timing: bf16, fp32, fp8 or int8", DefaultValueFactory = _ => "bf16" };
        dtype.AcceptOnlyFromAmong(WeightsChoice.Names);
        var device = new Option<string>("--device") { Description = "With --timing: auto, cpu, cuda or cuda:N", DefaultValueFactory = _ => "auto" };
        var mmap = new Option<string>("--mmap") { Description = "With --timing: CPU weights as memory maps of the files: auto (files on a read-only filesystem), on, off", DefaultValueFactory = _ => "auto" };
        mmap.AcceptOnlyFromAmong(WeightMappings.Names);
        var threads = new Option<int?>("--read-threads") { Description = $"With --timing: threads reading tensors at once (default {StateDict.ReadThreads}: the cores, 2 to 8)" };
        var command = new Command("inspect", "List the tensors of safetensors checkpoints: name, dtype, shape, size, parameter counts; or time a model folder's load (--timing)")
            { path, json, timing, dtype, device, mmap, threads };
        command.SetAction(r => r.GetValue(timing)
            ? LoadTimingReport.Run(r.GetValue(threads) is { } n ? n : StateDict.ReadThreads, r.GetValue(path)!, r.GetValue(dtype)!, r.GetValue(device)!, WeightMappings.Parse(r.GetValue(mmap)!), r.GetValue(json), r.InvocationConfiguration.Output)
            : Run(r.GetValue(path)!, r.GetValue(json), r.InvocationConfiguration.Output, r.InvocationConfiguration.Error));
        return command;
    }

    /// <summary>One checkpoint: a file, or a set of shards.</summary>
    internal sealed record Summary(string Path, IReadOnlyList<string> Files, IReadOnlyList<TensorEntry> Tensors)
    {
        public long Parameters => Tensors.Sum(t => t.ElementCount);
        public long Bytes => Tensors.Sum(t => t.ByteLength);
        public IEnumerable<(SafetensorsDType DType, int Count, long Parameters, long Bytes)> PerDType =>
            Tensors.GroupBy(t => t.DType).OrderByDescending(g => g.Sum(t => t.ByteLength))
                .Select(g => (g.Key, g.Count(), g.Sum(t => t.ElementCount), g.Sum(t => t.ByteLength)));
    }

    internal static int Run(string path, bool json, TextWriter output, TextWriter error)
    {
        TorchRuntime.EnsureInitialized();
        var found = Checkpoint.Discover(path);
        if (found.Count == 0) throw new FileNotFoundException($"{Path.GetFullPath(path)}: no safetensors checkpoint in this folder");
        var summaries = Scan(found, ShowProgress(found, error));
        // A model folder: say which family the registry sees (card family key first, else the tensors).
        if (Directory.Exists(path) && !json)
        {
            try { output.WriteLine($"model folder: family {ModelFamilies.Detect(path).Name}{(ModelCards.MarkedCard(path) is { } card ? $", card {card}" : "")}"); }
            catch (InvalidDataException e) { output.WriteLine($"model folder: {e.Message}"); }
        }
        if (json) WriteJson(summaries, output);
        else WriteTables(summaries, output);
        return 0;
    }

    static IAnsiConsole? ShowProgress(IReadOnlyList<string> found, TextWriter error)
    {
        if (!ReferenceEquals(error, Console.Error) || Console.IsErrorRedirected) return null;
        long bytes = found.Sum(f => new FileInfo(f).Length);
        if (found.Count < ProgressMinFiles && bytes < ProgressMinBytes) return null;
        return AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(error) });
    }

    static List<Summary> Scan(IReadOnlyList<string> found, IAnsiConsole? progress)
    {
        var summaries = new List<Summary>();
        void ScanAll(Action<string>? step)
        {
            foreach (var f in found)
            {
                step?.Invoke(f);
                using var source = Checkpoint.Open(f);
                var files = source switch
                {
                    ShardedSafetensors s => s.Files.Select(x => x.Path).ToList(),
                    SafetensorsFile s => [s.Path],
                    _ => new List<string>(),
                };
                summaries.Add(new Summary(f, files, source.Entries));
            }
        }
        if (progress is null) ScanAll(null);
        else
            new Progress(progress).AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("Reading headers", maxValue: found.Count);
                    ScanAll(f => { task.Description = Markup.Escape(Path.GetFileName(f)); task.Increment(1); });
                });
        return summaries;
    }

    static void WriteTables(List<Summary> summaries, TextWriter output)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output) });
        if (!ReferenceEquals(output, Console.Out) || Console.IsOutputRedirected) console.Profile.Width = 4096; // never wrap names in files and pipes
        foreach (var s in summaries)
        {
            console.WriteLine(s.Files.Count > 1 || s.Files.FirstOrDefault() != s.Path ? $"{s.Path} ({s.Files.Count} files)" : s.Path);
            var table = new Table().AddColumns("name", "dtype", "shape", "size");
            table.Columns[3].RightAligned();
            foreach (var t in s.Tensors) table.AddRow(new Text(t.Name), new Text(t.DType.ToString()), new Text(t.ShapeText), new Text(Size(t.ByteLength)));
            console.Write(table);
            console.WriteLine($"{s.Tensors.Count} tensors, {Parameters(s.Parameters)}, {Size(s.Bytes)}");
            foreach (var (dtype, count, parameters, bytes) in s.PerDType)
                console.WriteLine($"  {dtype,-8} {count,6} tensors {Parameters(parameters),24} {Size(bytes),12}");
            console.WriteLine();
        }
    }

    static void WriteJson(List<Summary> summaries, TextWriter output)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("checkpoints");
            foreach (var s in summaries)
            {
                w.WriteStartObject();
                w.WriteString("path", s.Path);
                w.WriteStartArray("files");
                foreach (var f in s.Files) w.WriteStringValue(f);
                w.WriteEndArray();
                w.WriteNumber("tensor_count", s.Tensors.Count);
                w.WriteNumber("parameter_count", s.Parameters);
                w.WriteNumber("total_bytes", s.Bytes);
                w.WriteStartObject("bytes_per_dtype");
                foreach (var d in s.PerDType) w.WriteNumber(d.DType.ToString(), d.Bytes);
                w.WriteEndObject();
                w.WriteStartArray("tensors");
                foreach (var t in s.Tensors)
                {
                    w.WriteStartObject();
                    w.WriteString("name", t.Name);
                    w.WriteString("dtype", t.DType.ToString());
                    w.WriteStartArray("shape");
                    foreach (var d in t.Shape) w.WriteNumberValue(d);
                    w.WriteEndArray();
                    w.WriteNumber("bytes", t.ByteLength);
                    w.WriteString("file", t.File);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        output.WriteLine(System.Text.Encoding.UTF8.GetString(ms.ToArray()));
    }

    /// <summary>"3.88 B parameters", "12.5 M parameters", "950 parameters".</summary>
    internal static string Parameters(long n) => n switch
    {
        >= 1_000_000_000 => $"{n / 1e9:0.00} B parameters",
        >= 1_000_000 => $"{n / 1e6:0.00} M parameters",
        >= 1_000 => $"{n / 1e3:0.00} K parameters",
        1 => "1 parameter",
        _ => $"{n} parameters",
    };

    /// <summary>Binary units: "512 B", "64.0 MiB", "7.23 GiB".</summary>
    internal static string Size(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{bytes} B" : v >= 100 ? $"{v:0} {units[u]}" : v >= 10 ? $"{v:0.0} {units[u]}" : $"{v:0.00} {units[u]}";
    }
}
