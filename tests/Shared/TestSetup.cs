using System.Runtime.CompilerServices;
using InferenceServer.Models.Runtime;

namespace InferenceServer.Tests.Shared;

static class TestSetup
{
#pragma warning disable CA2255 // a test assembly: libtorch must be loadable before any test touches a tensor
    [ModuleInitializer]
    internal static void Init() => TorchRuntime.EnsureInitialized();
#pragma warning restore CA2255
}
