namespace InferenceServer.Server.Lora;

/// <summary>What a loaded adapter is on one model (a copy of its report: safe to read after the adapter is disposed).</summary>
public sealed record LoadedLoraReport(string Model, string Format, int Modules, IReadOnlyList<long> Ranks, IReadOnlyList<double> Alphas,
    int Targets, long Bytes, string Summary);

/// <summary>An adapter of the folder: its name, file size, and the models it is loaded for now.</summary>
public sealed record LoraListEntry(string Name, long FileBytes, IReadOnlyList<LoadedLoraReport> Loaded);

/// <summary>The folder's adapters plus the cache's state and the per-request limit (gRPC ListLoras, GET /v1/loras).</summary>
public sealed record LoraListing(IReadOnlyList<LoraListEntry> Adapters, long LoadedBytes, long BudgetBytes, int MaxPerRequest);
