using System.Diagnostics;
using System.Text.Json;
using InferenceServer.Tests.Serving;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Grpc;

/// <summary>
/// A client in another language: tests/node-client/generate.js (@grpc/grpc-js + @grpc/proto-loader, versions locked in its
/// package-lock.json, installed with <c>npm ci</c> from the npm registry once per test run) calls Generate on a live server.
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
}
