namespace InferenceServer.Tests.Shared;

/// <summary>
/// Tests that measure process-wide quantities (RSS, live tensor counts) join this collection: xunit runs it after the
/// parallel collections, with nothing else running, so other tests' allocations cannot skew the figures.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RunAlone
{
    public const string Name = "Process-wide measurements (run alone)";
}
