using System.Diagnostics;
using System.Net;

namespace InferenceServer.Reliability;

/// <summary>The full-filesystem and killed-CLI-write cases of <see cref="FaultsRun"/>.</summary>
public static partial class FaultsRun
{
    static async Task<(bool?, string)> FullDiskUploadsAsync(HarnessOptions h, string model, SmallDisk disk, CancellationToken ct)
    {
        if (!disk.Available) return (null, disk.Why);
        disk.Empty();
        string tmp = Directory.CreateDirectory(Path.Combine(disk.Path, "tmp")).FullName;
        // TMPDIR: where .NET (and ASP.NET Core's form buffering, over 64 KB) puts temporary files; ASPNETCORE_TEMP wins if set.
        var env = new Dictionary<string, string> { ["TMPDIR"] = tmp, ["ASPNETCORE_TEMP"] = tmp };
        await using var server = await ServerProcess.StartAsync(h.ServerDll, ServerProcess.ServeArgs(model, h.KeyArgs), h.StartTimeout, env, ct).ConfigureAwait(false);
        var samples = new ImageSamples();
        disk.Fill();
        using var sender = new RequestSender(server.HttpBase, server.GrpcAddress, h.ApiKey, TimeSpan.FromSeconds(60));
        var answers = new Dictionary<string, int>();
        bool ok = true;
        for (int i = 0; i < 6; i++)
        {
            // A 300 KB noise PNG part: over the 64 KB in-memory threshold, so the form reader must buffer it to TMPDIR.
            var big = ImageSamples.Png(320, 320, (x, y) => ((byte)(x * 7 + y * 13 + i), (byte)(x * y), (byte)(x ^ (y + i))));
            var c = new FuzzCase
            {
                Class = "disk", Transport = Transport.Http, Path = "/v1/images/edits", ContentType = "multipart/form-data; boundary=diskb",
                Body = MultipartMutations.Form("diskb", [new("prompt", "x"u8.ToArray()), new("size", "64x64"u8.ToArray()), new("steps", "1"u8.ToArray()),
                    new("response_format", "b64_json"u8.ToArray()), new("image", big, "big.png", "image/png")]),
            };
            var o = await sender.SendAsync(c, ct).ConfigureAwait(false);
            string key = o.HttpStatus?.ToString() ?? o.Bucket;
            answers[key] = answers.GetValueOrDefault(key) + 1;
            ok &= o.HttpStatus is 503 or 507;
        }
        disk.Empty();
        var (validHttp, validGrpc) = await FuzzRun.ValidAsync(sender).ConfigureAwait(false);
        ok &= validHttp == "200" && validGrpc == "OK";
        return (ok, $"uploads answered {string.Join(", ", answers.Select(kv => $"{kv.Key} x{kv.Value}"))}; after freeing space: HTTP {validHttp}, gRPC {validGrpc}");
    }

    static async Task<(bool?, string)> FullDiskGenerateAsync(HarnessOptions h, string model, SmallDisk disk, CancellationToken ct)
    {
        if (!disk.Available) return (null, disk.Why);
        disk.Empty();
        disk.Fill();
        string file = Path.Combine(disk.Path, "out.png");
        var r = await CliRun.RunAsync(h.ServerDll, ["generate", "--model", model, "--prompt", "x", "--size", "64x64", "--steps", "1", "--device", "cpu", "--out", file],
            TimeSpan.FromMinutes(3), ct).ConfigureAwait(false);
        var (pass, observed) = Verdict(r, expectedExit: 2);
        bool leftover = File.Exists(file);
        string left = leftover ? $"; a {new FileInfo(file).Length}-byte file is left under the final name" : "; nothing under the final name";
        disk.Empty();
        return (pass == true && !leftover, observed + left);
    }

    /// <summary>
    /// Writes the same checkpoint as the served model (same preset, dtype and seed) and SIGKILLs the writer once
    /// <paramref name="at"/> of the reference folder's bytes are on disk; then every file under a final name must have
    /// its reference size (temporary names are fine, a truncated file under a final name is not).
    /// </summary>
    static async Task<(bool?, string)> KilledCheckpointAsync(HarnessOptions h, string model, string outFolder, double at, CancellationToken ct)
    {
        var reference = Directory.GetFiles(model, "*", SearchOption.AllDirectories).ToDictionary(f => Path.GetRelativePath(model, f), f => new FileInfo(f).Length);
        long total = reference.Values.Sum();
        string dir = Path.Combine(outFolder, $"killed-checkpoint-{at:0.00}");
        long Written() => Directory.Exists(dir) ? Directory.GetFiles(dir, "*", SearchOption.AllDirectories).Sum(Length) : 0;
        // A temporary file listed a moment ago may have been renamed since: it counts under its final name next time.
        static long Length(string f)
        {
            try { return new FileInfo(f).Length; }
            catch (FileNotFoundException) { return 0; }
        }

        // The last fifth of the bytes (the tokenizer's files, copied) is written in a few milliseconds: the writer can finish
        // between two looks at the folder. Each attempt is a fresh write; only an attempt that was killed mid-write counts.
        const int Attempts = 5;
        long seen = 0;
        bool killed = false;
        int exit = 0;
        for (int attempt = 0; attempt < Attempts && !killed; attempt++)
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
            var psi = ServerProcess.Dotnet(h.ServerDll, ["random-checkpoint", "--preset", "tiny", "--dtype", "fp32", "--seed", "5", "--out", dir]);
            using var p = Process.Start(psi)!;
            p.OutputDataReceived += (_, _) => { };
            p.ErrorDataReceived += (_, _) => { };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            var sw = Stopwatch.StartNew();
            // Looked at without pause (a folder listing is ~0.1 ms) once past the first 5 %, so a fast phase is still caught.
            while (!p.HasExited && (seen = Written()) < total * at && sw.Elapsed < TimeSpan.FromMinutes(3))
                if (seen < total * 0.05) await Task.Delay(5, ct).ConfigureAwait(false);
            killed = !p.HasExited;
            if (killed) p.Kill();
            await p.WaitForExitAsync(ct).ConfigureAwait(false);
            exit = p.ExitCode;
        }
        if (!killed) return (null, $"skipped: in {Attempts} attempts random-checkpoint finished (exit {exit}) before {at:P0} of {total:N0} bytes was seen");

        var partial = new List<string>();
        var others = new List<string>();
        foreach (var f in Directory.Exists(dir) ? Directory.GetFiles(dir, "*", SearchOption.AllDirectories) : [])
        {
            string rel = Path.GetRelativePath(dir, f);
            long len = new FileInfo(f).Length;
            if (reference.TryGetValue(rel, out long want)) { if (len != want) partial.Add($"{rel} ({len:N0} of {want:N0} bytes)"); }
            else others.Add(rel);
        }
        string note = $"killed at {seen:N0} of {total:N0} bytes; " + (partial.Count == 0 ? "no partial file under a final name" : "PARTIAL under final names: " + string.Join(", ", partial))
            + (others.Count > 0 ? $"; other files: {string.Join(", ", others.Take(5))}" : "");
        return (partial.Count == 0, note);
    }
}
