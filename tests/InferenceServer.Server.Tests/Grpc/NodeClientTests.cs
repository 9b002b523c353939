using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using InferenceServer.Client;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Grpc;

/// <summary>
/// A client in another language: tests/node-client/generate.js (@grpc/grpc-js + @grpc/proto-loader, versions locked in its
/// package-lock.json, installed with <c>npm ci</c> from the npm registry once per test run) calls Generate on a live server;
/// tests/node-client/job.js submits a durable job, watches it and fetches its images through JobService.
/// </summary>
public sealed class NodeClientTests(ITestOutputHelper output)
{
    static readonly SemaphoreSlim Install = new(1, 1);
    static bool installed;

    static string ClientFolder()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "InferenceServer.sln")))
                return Path.Combine(dir.FullName, "tests", "node-client");
        throw new InvalidOperationException($"InferenceServer.sln not found above {AppContext.BaseDirectory}");
    }

    static async Task<(int Code, string Out, string Err)> Run(string file, string arguments, string folder, TimeSpan timeout)
    {
        using var p = new Process { StartInfo = new ProcessStartInfo(file, arguments)
        {
            WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        } };
        try { p.Start(); }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"'{file}' could not be started ({e.Message}): NodeClientTests need node (v18+) and npm on PATH", e);
        }
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try { await p.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {arguments} did not finish within {timeout.TotalSeconds:0} s");
        }
        return (p.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs a process, handing each line of its output to <paramref name="onLine"/> as it is written.</summary>
    static async Task<(int Code, List<string> Lines, string Err)> RunLines(string file, string arguments, string folder, TimeSpan timeout, Action<string> onLine)
    {
        using var p = new Process { StartInfo = new ProcessStartInfo(file, arguments)
        {
            WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        } };
        p.Start();
        var stderr = p.StandardError.ReadToEndAsync();
        var lines = new List<string>();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            while (await p.StandardOutput.ReadLineAsync(cts.Token) is { } line)
            {
                lines.Add(line);
                onLine(line);
            }
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {arguments} did not finish within {timeout.TotalSeconds:0} s; output so far:\n{string.Join('\n', lines)}");
        }
        return (p.ExitCode, lines, await stderr);
    }

    static async Task EnsureInstalled(string folder)
    {
        await Install.WaitAsync();
        try
        {
            if (installed) return;
            var (code, stdout, stderr) = await Run("npm", "ci --no-audit --no-fund", folder, TimeSpan.FromMinutes(5));
            if (code != 0) throw new InvalidOperationException($"npm ci failed in {folder} (exit {code}):\n{stdout}\n{stderr}");
            installed = true;
        }
        finally { Install.Release(); }
    }

    [Fact]
    public async Task A_node_grpc_js_client_generates_a_png_of_the_requested_size()
    {
        string folder = ClientFolder();
        var (nodeCode, version, _) = await Run("node", "--version", folder, TimeSpan.FromSeconds(30));
        Assert.True(nodeCode == 0, "node --version failed: NodeClientTests need node (v18+) and npm on PATH");
        await EnsureInstalled(folder);

        await using var server = await RunningServer.StartAsync();
        var (code, stdout, stderr) = await Run("node", $"generate.js 127.0.0.1:{server.GrpcPort} 96 64", folder, TimeSpan.FromMinutes(2));
        output.WriteLine($"node {version.Trim()}: {stdout}{stderr}");
        Assert.True(code == 0, $"generate.js exited {code}: {stdout}\n{stderr}");
        using var result = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        var r = result.RootElement;
        Assert.True(r.GetProperty("ok").GetBoolean());
        Assert.Equal((96, 64), (r.GetProperty("width").GetInt32(), r.GetProperty("height").GetInt32()));
        Assert.Equal("image/png", r.GetProperty("mime").GetString());
    }

    [Fact]
    public async Task A_node_client_watches_a_job_from_its_state_through_each_step_to_succeeded_and_reads_the_same_image_bytes()
    {
        string folder = ClientFolder();
        var (nodeCode, version, _) = await Run("node", "--version", folder, TimeSpan.FromSeconds(30));
        Assert.True(nodeCode == 0, "node --version failed: NodeClientTests need node (v18+) and npm on PATH");
        await EnsureInstalled(folder);

        await using var server = await HoldingGenerator.StartServerAsync();
        var generator = server.App.Services.GetRequiredService<HoldingGenerator>();
        // Held before its first step until node's watch has its first event, so every step is one the watch saw happen.
        var gate = generator.Hold("[node]");
        try
        {
            var (code, lines, stderr) = await RunLines("node", $"job.js 127.0.0.1:{server.GrpcPort} \"a lighthouse [node]\" 64 64 2 5", folder,
                TimeSpan.FromMinutes(2), line => { if (line.StartsWith("{\"event\"", StringComparison.Ordinal)) gate.TrySetResult(); });
            output.WriteLine($"node {version.Trim()}:\n{string.Join('\n', lines)}\n{stderr}");
            Assert.True(code == 0, $"job.js exited {code}: {string.Join('\n', lines)}\n{stderr}");

            var parsed = lines.Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
            string id = parsed[0].GetProperty("submitted").GetString()!;
            var events = parsed.Where(e => e.TryGetProperty("event", out _)).ToList();
            var types = events.Select(e => e.GetProperty("event").GetString()!).ToList();
            // First the job's state when the watch began (held: queued, or claimed at step 0), then each step in order, then the end.
            Assert.Contains(types[0], new[] { "queued", "running" });
            Assert.Equal(types[0], events[0].GetProperty("status").GetString());
            Assert.Equal(0, events[0].GetProperty("step").GetInt32());
            var rest = new List<string> { "progress", "progress", "succeeded" };
            if (types[0] == "queued") rest.Insert(0, "running");
            Assert.Equal(rest, types.Skip(1));
            Assert.Equal([1, 2], events.Where(e => e.GetProperty("event").GetString() == "progress").Select(e => e.GetProperty("step").GetInt32()));

            var result = parsed[^1];
            Assert.True(result.GetProperty("ok").GetBoolean());
            var nodeImage = Assert.Single(result.GetProperty("images").EnumerateArray());
            using var client = new InferenceClient(server.GrpcAddress);
            var image = Assert.Single(await client.GetJobImagesAsync(id));
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(image.Data.Span)), nodeImage.GetProperty("sha256").GetString());
            Assert.Equal(image.Data.Length, nodeImage.GetProperty("bytes").GetInt32());
            Assert.Equal((64, 64, "image/png", "5"), (nodeImage.GetProperty("width").GetInt32(), nodeImage.GetProperty("height").GetInt32(),
                nodeImage.GetProperty("mime").GetString(), nodeImage.GetProperty("seed").GetString()));
        }
        finally { generator.ReleaseAll(); }
    }
}
