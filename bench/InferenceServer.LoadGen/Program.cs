using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using InferenceServer.LoadGen;

// loadgen closed --target URL --concurrency 1,4,16 [--duration 30 | --requests N] [--sizes 64x64:3,128x128:1] [--steps 4] [--n 1] [--json FILE]
// loadgen open   --target URL --rate 2,5,10 --duration 30 ...
// loadgen in-process --model DIR [--dtype fp32] ...      (the pipeline without a server: the overhead baseline)
// loadgen plot --out latency.png FILE.json...
// loadgen jobs --target URL --http URL [--jobs 10000] [--chunk 500] [--submit-concurrency 16] [--latency-samples 50]
var json = new JsonSerializerOptions { WriteIndented = true };
var target = new Option<string>("--target") { Description = "gRPC address", DefaultValueFactory = _ => "http://127.0.0.1:50051" };
var apiKey = new Option<string?>("--api-key") { Description = "Sent as authorization: Bearer KEY" };
var duration = new Option<double>("--duration") { Description = "Seconds per run", DefaultValueFactory = _ => 30 };
var requests = new Option<int?>("--requests") { Description = "Requests per run instead of a duration (closed loop, in-process)" };
var sizes = new Option<string>("--sizes") { Description = "Size mix WxH[:weight],...", DefaultValueFactory = _ => "64x64" };
var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 4 };
var n = new Option<int>("--n") { Description = "Images per request", DefaultValueFactory = _ => 1 };
var prompts = new Option<int>("--prompt-pool") { Description = "Distinct prompts cycled through", DefaultValueFactory = _ => 16 };
var label = new Option<string>("--label") { Description = "Series name in the JSON and the plot", DefaultValueFactory = _ => "server" };
var output = new Option<string?>("--json") { Description = "Write the runs (a JSON array) to this file" };
var concurrency = new Option<string>("--concurrency") { Description = "Comma-separated concurrencies, one run each", DefaultValueFactory = _ => "1,4,16" };
var rate = new Option<string>("--rate") { Description = "Comma-separated arrival rates (requests/s), one run each", Required = true };
var model = new Option<string>("--model") { Description = "Model folder", Required = true };
var dtype = new Option<string>("--dtype") { DefaultValueFactory = _ => "bf16" };
var files = new Argument<string[]>("files") { Description = "JSON files written by closed/open/in-process" };
var png = new Option<string>("--out") { Description = "PNG to write", Required = true };

Workload Work(ParseResult r) => new(Workload.ParseSizes(r.GetValue(sizes)!), r.GetValue(steps), r.GetValue(n), r.GetValue(prompts), 1000);
static List<T> List<T>(string csv, Func<string, T> parse) => csv.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(parse).ToList();
void Report(ParseResult r, List<RunResult> runs)
{
    Console.WriteLine($"{"mode",-10} {"load",6} {"ok",6} {"err",5} {"req/s",8} {"img/s",8} {"p50 ms",9} {"p95 ms",9} {"p99 ms",9} {"queue p50",10} {"batch",6}");
    foreach (var x in runs)
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{x.Mode,-10} {(x.Rate ?? x.Concurrency ?? 1),6:G4} {x.Ok,6} {x.Errors.Values.Sum(),5} {x.Throughput,8:F2} {x.ImagesPerSecond,8:F2} {x.Latency.P50,9:F1} {x.Latency.P95,9:F1} {x.Latency.P99,9:F1} {x.ServerQueue.P50,10:F1} {x.MeanBatchSize,6:F2}"));
    foreach (var x in runs.Where(x => x.Errors.Count > 0))
        Console.WriteLine($"errors at {x.Rate ?? x.Concurrency}: {string.Join(", ", x.Errors.Select(e => $"{e.Key} {e.Value}"))}");
    if (r.GetValue(output) is { } file) File.WriteAllText(file, JsonSerializer.Serialize(runs, json));
}

var closed = new Command("closed", "Closed loop: fixed concurrency, next request when the previous one is answered")
    { target, apiKey, concurrency, duration, requests, sizes, steps, n, prompts, label, output };
closed.SetAction(async r =>
{
    var runs = new List<RunResult>();
    foreach (int c in List(r.GetValue(concurrency)!, int.Parse))
        runs.Add(await Runner.ClosedAsync(r.GetValue(target)!, r.GetValue(apiKey), Work(r), c, TimeSpan.FromSeconds(r.GetValue(duration)), r.GetValue(requests), r.GetValue(label)!));
    Report(r, runs);
});
var open = new Command("open", "Open loop: Poisson arrivals at each rate, whatever the server does")
    { target, apiKey, rate, duration, sizes, steps, n, prompts, label, output };
open.SetAction(async r =>
{
    var runs = new List<RunResult>();
    foreach (double q in List(r.GetValue(rate)!, s => double.Parse(s, CultureInfo.InvariantCulture)))
        runs.Add(await Runner.OpenAsync(r.GetValue(target)!, r.GetValue(apiKey), Work(r), q, TimeSpan.FromSeconds(r.GetValue(duration)), r.GetValue(label)!));
    Report(r, runs);
});
var inProcess = new Command("in-process", "The same workload through GenerationPipeline in this process, one at a time (no server)")
    { model, dtype, duration, requests, sizes, steps, n, prompts, output };
inProcess.SetAction(r => Report(r, [Runner.InProcess(r.GetValue(model)!, r.GetValue(dtype)!, Work(r), TimeSpan.FromSeconds(r.GetValue(duration)), r.GetValue(requests), "in-process")]));
var plot = new Command("plot", "Latency (p50/p95/p99) and throughput against load, from JSON files, as a PNG") { png, files };
plot.SetAction(r =>
{
    var runs = r.GetValue(files)!.SelectMany(f => JsonSerializer.Deserialize<List<RunResult>>(File.ReadAllText(f)) ?? []).ToList();
    Plot.Png(runs, r.GetValue(png)!);
    Console.WriteLine($"{r.GetValue(png)}: {runs.Count} runs");
});
var jobCount = new Option<int>("--jobs") { Description = "Jobs to submit", DefaultValueFactory = _ => 10_000 };
var chunk = new Option<int>("--chunk") { Description = "Jobs per SubmitJobs call (the first half of the jobs)", DefaultValueFactory = _ => 500 };
var httpTarget = new Option<string>("--http") { Description = "The server's HTTP address (for /metrics)", DefaultValueFactory = _ => "http://127.0.0.1:8080" };
var samples = new Option<int>("--latency-samples") { Description = "Sequential live requests and jobs compared for latency", DefaultValueFactory = _ => 50 };
var submitConcurrency = new Option<int>("--submit-concurrency") { Description = "Concurrent SubmitJob calls (the second half of the jobs)", DefaultValueFactory = _ => 16 };
var jobsCommand = new Command("jobs", "Durable jobs: submit throughput (chunked and one per call), drain rate, claim time, and the latency a job adds over a live request")
    { target, httpTarget, jobCount, chunk, submitConcurrency, samples, steps, sizes, output };
jobsCommand.SetAction(async r =>
{
    var f = await JobsBench.RunAsync(r.GetValue(target)!, r.GetValue(httpTarget)!, r.GetValue(jobCount), r.GetValue(chunk), r.GetValue(submitConcurrency),
        r.GetValue(samples), r.GetValue(steps), r.GetValue(sizes)!);
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"""
        jobs                      {f.Jobs}
        submit, chunked           {f.SubmitJobsPerSecondChunked:F0} jobs/s
        submit, one per call      {f.SubmitJobsPerSecondSingle:F0} jobs/s
        drain                     {f.DrainSeconds:F1} s ({f.RunJobsPerSecond:F1} jobs/s)
        claim (server, mean)      {f.ClaimMsMean:F2} ms per batch
        live  latency p50 / p99   {f.LiveMs.P50:F1} / {f.LiveMs.P99:F1} ms
        job   latency p50 / p99   {f.JobMs.P50:F1} / {f.JobMs.P99:F1} ms (submit, watch to succeeded, fetch images)
        added by the job path     {f.JobMs.P50 - f.LiveMs.P50:F1} ms p50, {f.JobMs.P99 - f.LiveMs.P99:F1} ms p99
        """));
    if (r.GetValue(output) is { } file) File.WriteAllText(file, JsonSerializer.Serialize(f, json));
});
var root = new RootCommand("InferenceServer load generator") { closed, open, inProcess, plot, jobsCommand };
return await root.Parse(args).InvokeAsync();
