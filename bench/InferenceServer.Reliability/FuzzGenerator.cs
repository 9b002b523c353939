namespace InferenceServer.Reliability;

/// <summary>
/// Case i of a run is a pure function of (seed, i): the classes take turns (so even a small N covers each), and each
/// case draws from its own <see cref="Random"/>(seed, i). A saved replay therefore names a case another run can rebuild.
/// </summary>
public sealed class FuzzGenerator(int seed, ImageSamples samples, string? apiKey, IReadOnlyCollection<string>? only = null)
{
    delegate FuzzCase Make(Random rng);

    IReadOnlyList<(string Class, Make Make)> Classes => classes ??= Build();
    IReadOnlyList<(string, Make)>? classes;

    List<(string, Make)> Build()
    {
        var list = new List<(string, Make)>
        {
            ("json-fields", r => JsonMutations.Mutate(r, r.Next(4) == 0 ? "/v1/images/edits" : "/v1/images/generations")),
            ("json-structure", r => JsonMutations.Structure(r, r.Next(4) == 0 ? "/v1/images/edits" : "/v1/images/generations")),
            ("utf8", r => JsonMutations.Utf8(r, "/v1/images/generations")),
            ("oversized", r => JsonMutations.Oversized(r, "/v1/images/generations")),
            ("image", r => MultipartMutations.Images(r, samples)),
            ("image-json", r => MultipartMutations.ImagesAsJson(r, samples)),
            ("multipart", r => MultipartMutations.Framing(r, samples)),
            ("http", HttpMutations.Protocol),
            ("grpc-fields", r => GrpcMutations.Fields(r, samples)),
            ("grpc-utf8", GrpcMutations.Utf8),
            ("grpc-bytes", r => GrpcMutations.Bytes(r, samples)),
            ("grpc-methods", GrpcMutations.Methods),
        };
        if (apiKey is not null) list.Add(("auth", r => HttpMutations.Auth(r, apiKey)));
        return only is { Count: > 0 } ? list.Where(c => only.Contains(c.Item1)).ToList() : list;
    }

    public IEnumerable<string> ClassNames => Classes.Select(c => c.Class);

    public FuzzCase Case(int index)
    {
        var (_, make) = Classes[index % Classes.Count];
        var rng = new Random(unchecked(seed * 1_000_003 + index * 7919) & int.MaxValue);   // not HashCode: it is salted per process
        return make(rng) with { Index = index };
    }
}
