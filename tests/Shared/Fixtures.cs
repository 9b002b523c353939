namespace InferenceServer.Tests.Shared;

/// <summary>
/// Finds the golden fixtures: the folder named by INFERENCE_FIXTURES, else the repository's own copy in tests/fixtures.
/// Parity theories enumerate case folders with <see cref="Cases"/>, so new case sets run without code changes.
/// </summary>
public static class Fixtures
{
    public const string EnvironmentVariable = "INFERENCE_FIXTURES";

    public static string Root { get; } = FindRoot();

    /// <summary>Case folder names under the root whose name starts with <paramref name="prefix"/>, sorted.</summary>
    public static IEnumerable<string> CaseNames(string prefix) =>
        Directory.Exists(Root)
            ? Directory.EnumerateDirectories(Root).Select(Path.GetFileName).OfType<string>()
                .Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal)
            : [];

    /// <summary>xunit MemberData rows (one per case folder) for the given prefix.</summary>
    public static TheoryData<string> Cases(string prefix)
    {
        var data = new TheoryData<string>();
        foreach (var n in CaseNames(prefix)) data.Add(n);
        if (data.Count == 0) throw new InvalidOperationException($"no fixture case '{prefix}*' under {Root} (set {EnvironmentVariable})");
        return data;
    }

    public static string CaseDir(string name) => Path.Combine(Root, name);

    static string FindRoot()
    {
        string? env = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env)) return Path.GetFullPath(env);
        // Walk up from the test binaries to the repository (the folder with InferenceServer.sln), then tests/fixtures.
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "InferenceServer.sln")))
                return Path.Combine(dir.FullName, "tests", "fixtures");
        return Path.GetFullPath(Path.Combine(Directory.GetCurrentDirectory(), "tests", "fixtures"));
    }
}
