using System.CommandLine;
using InferenceServer.Reliability;

// reliability fuzz     --server DLL [--model DIR] [--api-key K] --out DIR [--requests 1000] [--seed 1] [--concurrency 4]
// reliability overload --server DLL ... [--duration 30]
// reliability faults   --server DLL ... [--cases kill,model,disk,cli]
// reliability soak     --server DLL ... --minutes M [--fraction 0.5]
// reliability replay   --server DLL FILE.json...
// Every verb starts its own server on loopback, writes OUT/result.json and OUT/summary.md, and exits 1 when a goal fails.
var server = new Option<string>("--server") { Description = "inference-server.dll of the build under test", Required = true };
var model = new Option<string?>("--model") { Description = "Tiny model folder (default: written with the server's random-checkpoint --preset tiny)" };
var apiKey = new Option<string?>("--api-key") { Description = "Start the server with this key and send it (the fuzz adds auth cases)" };
var outDir = new Option<string>("--out") { Description = "Output folder (result.json, summary.md, replay/)", Required = true };
var timeLimit = new Option<double>("--time-limit") { Description = "Minutes the whole verb may take", DefaultValueFactory = _ => 30 };
var requests = new Option<int>("--requests") { Description = "Malformed requests to send", DefaultValueFactory = _ => 1000 };
var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1 };
var concurrency = new Option<int>("--concurrency") { DefaultValueFactory = _ => 4 };
var duration = new Option<double>("--duration") { Description = "Seconds of the open-loop overload phase", DefaultValueFactory = _ => 30 };
var multiple = new Option<double>("--multiple") { Description = "Offered rate as a multiple of the sustainable rate", DefaultValueFactory = _ => 5 };
var cases = new Option<string>("--cases") { Description = "Fault groups: kill,model,disk,cli", DefaultValueFactory = _ => "kill,model,disk,cli" };
var minutes = new Option<double>("--minutes") { Description = "Soak length", DefaultValueFactory = _ => 3 };
var fraction = new Option<double>("--fraction") { Description = "Offered rate as a fraction of the sustainable rate", DefaultValueFactory = _ => 0.5 };
var window = new Option<double>("--window") { Description = "Seconds per soak window", DefaultValueFactory = _ => 30 };
var slow = new Option<bool>("--include-slow") { Description = "fuzz: also send a real 8000x8000 decompression bomb (valid, minutes of CPU each)" };
var classes = new Option<string?>("--classes") { Description = "fuzz: only these generator classes, comma-separated (json-fields, json-structure, utf8, oversized, image, image-json, multipart, http, grpc-fields, grpc-utf8, grpc-bytes, grpc-methods, auth)" };
var rate = new Option<double?>("--rate") { Description = "soak: offered requests/s (default: --fraction of the measured closed-loop rate)" };
var files = new Argument<string[]>("files") { Description = "Saved cases (replay/*.json)" };

HarnessOptions Harness(ParseResult r) => new()
{
    ServerDll = Path.GetFullPath(r.GetValue(server)!), Model = r.GetValue(model) is { } m ? Path.GetFullPath(m) : null,
    ApiKey = r.GetValue(apiKey), Out = r.GetValue(outDir)!, TimeLimit = TimeSpan.FromMinutes(r.GetValue(timeLimit)),
};
static int Verdict(bool passed, string outDir)
{
    Console.WriteLine(File.ReadAllText(Path.Combine(outDir, "summary.md")));
    return passed ? 0 : 1;
}

var fuzz = new Command("fuzz", "N malformed requests over HTTP and gRPC; goals: 0 defects, 0 hangs, valid request after, RSS back within 10 %")
    { server, model, apiKey, outDir, timeLimit, requests, seed, concurrency, slow, classes };
fuzz.SetAction(async (r, ct) =>
{
    var result = await FuzzRun.RunAsync(new FuzzRun.Options { Harness = Harness(r), Requests = r.GetValue(requests), Seed = r.GetValue(seed), Concurrency = r.GetValue(concurrency), IncludeSlow = r.GetValue(slow),
        Classes = r.GetValue(classes)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? [] }, ct);
    return Verdict(result.Passed, r.GetValue(outDir)!);
});
var overload = new Command("overload", "Sustainable rate (closed loop), then open-loop Poisson arrivals at a multiple of it")
    { server, model, apiKey, outDir, timeLimit, duration, multiple };
overload.SetAction(async (r, ct) =>
{
    var result = await OverloadRun.RunAsync(Harness(r), TimeSpan.FromSeconds(r.GetValue(duration)), r.GetValue(multiple), ct);
    return Verdict(result.Passed, r.GetValue(outDir)!);
});
var faults = new Command("faults", "SIGKILL mid-request, corrupted model folders, full filesystem, killed CLI writes")
    { server, model, apiKey, outDir, timeLimit, cases };
faults.SetAction(async (r, ct) =>
{
    var result = await FaultsRun.RunAsync(Harness(r), r.GetValue(cases)!.Split(',', StringSplitOptions.RemoveEmptyEntries), ct);
    return Verdict(result.Passed, r.GetValue(outDir)!);
});
var soak = new Command("soak", "Mixed valid traffic at a fraction of capacity; RSS and latency per window")
    { server, model, apiKey, outDir, timeLimit, minutes, fraction, window, rate };
soak.SetAction(async (r, ct) =>
{
    var result = await SoakRun.RunAsync(Harness(r), TimeSpan.FromMinutes(r.GetValue(minutes)), r.GetValue(fraction), TimeSpan.FromSeconds(r.GetValue(window)), ct, r.GetValue(rate));
    return Verdict(result.Passed, r.GetValue(outDir)!);
});
var replay = new Command("replay", "Send saved cases (fuzz replay/*.json) to a fresh server") { server, model, apiKey, outDir, files };
replay.SetAction(async (r, ct) => await Replay.RunAsync(Harness(r), r.GetValue(files)!, Console.Out, ct));
return await new RootCommand("InferenceServer reliability harness (loopback only)") { fuzz, overload, faults, soak, replay }.Parse(args).InvokeAsync();
