using BenchmarkDotNet.Running;
using InferenceServer.Models.Runtime;

TorchRuntime.EnsureInitialized();
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
