using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using InferenceServer.Models.Runtime;

// Benchmarks run in this process (in-process toolchain): libtorch is loaded and patched once here, and the
// benchmark classes run on the same native runtime the server uses. Select with --filter, e.g. --filter '*Safetensors*'.
TorchRuntime.EnsureInitialized();
if (args is ["profile", ..]) { InferenceServer.Benchmarks.Flux2StepProfile.Run(args); return; }
if (args is ["vae-memory", .. var probeArgs]) { InferenceServer.Benchmarks.VaeMemoryProbe.Run(probeArgs); return; }
// A job given on the command line (e.g. `--job Dry --inProcess` for a quick check) replaces the default one.
bool jobGiven = args.Any(a => a is "--job" or "-j");
var config = (jobGiven ? DefaultConfig.Instance
        : DefaultConfig.Instance.AddJob(Job.Default.WithToolchain(new InProcessEmitToolchain(TimeSpan.FromHours(2), logOutput: true)))) // a full-size DiT step takes minutes
    .WithOptions(ConfigOptions.DisableOptimizationsValidator);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
