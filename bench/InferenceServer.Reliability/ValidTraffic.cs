using System.Text;

namespace InferenceServer.Reliability;

/// <summary>
/// Valid requests for overload and soak: text-to-image and edits (with one or two reference images), over HTTP (JSON
/// and multipart) and gRPC (unary and streaming), small sizes and few steps so a CPU server answers in well under a second.
/// </summary>
public static class ValidTraffic
{
    public static FuzzCase TextToImageGrpc(int i, int steps = 2) => new()
    {
        Class = "t2i-grpc", Name = "gRPC Generate", Transport = Transport.Grpc, Path = GrpcMutations.Service + "Generate",
        Body = new GrpcMutations.Proto().String(2, $"soak {i % 16}").Varint(4, 64).Varint(5, 64).Varint(10, (ulong)steps).Varint(9, (ulong)i).ToArray(),
    };

    public static FuzzCase TextToImageHttp(int i, int steps = 2) => new()
    {
        Class = "t2i-http", Name = "HTTP generation", Transport = Transport.Http, ContentType = "application/json",
        Body = Encoding.UTF8.GetBytes($$"""{"prompt":"soak {{i % 16}}","size":"64x64","steps":{{steps}},"seed":{{i}},"response_format":"b64_json"}"""),
    };

    public static FuzzCase EditHttp(int i, ImageSamples samples, int steps = 2) => new()
    {
        Class = "edit-http", Name = "HTTP edit (multipart, 2 references)", Transport = Transport.Http, Path = "/v1/images/edits",
        ContentType = "multipart/form-data; boundary=soakb",
        Body = MultipartMutations.Form("soakb", [
            new("prompt", Encoding.UTF8.GetBytes($"edit {i % 16}")), new("size", "64x64"u8.ToArray()), new("steps", Encoding.UTF8.GetBytes(steps.ToString())),
            new("seed", Encoding.UTF8.GetBytes(i.ToString())), new("response_format", "b64_json"u8.ToArray()),
            new("image[]", samples.Valid, "a.png", "image/png"), new("image[]", samples.ByFormat.GetValueOrDefault("jpeg", samples.Valid), "b.jpg", "image/jpeg"),
        ]),
    };

    public static FuzzCase EditGrpcStream(int i, ImageSamples samples, int steps = 2) => new()
    {
        Class = "edit-grpc", Name = "gRPC GenerateStream edit (1 reference)", Transport = Transport.Grpc, Path = GrpcMutations.Service + "GenerateStream", Streaming = true,
        Body = new GrpcMutations.Proto().String(2, $"edit {i % 16}").Bytes(3, new GrpcMutations.Proto().Bytes(1, samples.Valid).ToArray())
            .Varint(4, 64).Varint(5, 64).Varint(10, (ulong)steps).Varint(9, (ulong)i).ToArray(),
    };

    /// <summary>Request i of a mix: t2i gRPC, t2i HTTP, edit HTTP, edit gRPC stream, in turn.</summary>
    public static FuzzCase Mixed(int i, ImageSamples samples) => (i % 4) switch
    {
        0 => TextToImageGrpc(i),
        1 => TextToImageHttp(i),
        2 => EditHttp(i, samples),
        _ => EditGrpcStream(i, samples),
    };

    public static bool Accepted(Outcome o) => o.HttpStatus == 200 || o.GrpcStatus == "OK";
    public static bool Refused(Outcome o) => o.HttpStatus == 429 || o.GrpcStatus == "ResourceExhausted";
}
