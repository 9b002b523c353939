using System.Text.Json.Serialization;

namespace InferenceServer.Reliability;

/// <summary>How a case reaches the server: the HTTP port (HTTP/1.1) or the gRPC port (raw protobuf bytes, HTTP/2).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<Transport>))]
public enum Transport { Http, Grpc }

/// <summary>
/// One request as bytes, so that anything can be sent and replayed exactly: over HTTP a method, path, headers and body;
/// over gRPC a full method name (<c>/inference.v1.ImageService/Generate</c>), metadata and the message bytes.
/// <see cref="Expect"/> names a required answer (an auth case must be 401 / UNAUTHENTICATED, whatever else it carries).
/// </summary>
public sealed record FuzzCase
{
    [JsonPropertyName("index")] public int Index { get; init; }
    /// <summary>The generator class (json-structure, json-types, utf8, multipart, image, grpc-bytes, auth, ...).</summary>
    [JsonPropertyName("class")] public string Class { get; init; } = "";
    /// <summary>What this instance does, for a person reading a replay.</summary>
    [JsonPropertyName("name")] public string Name { get; init; } = "";
    [JsonPropertyName("transport")] public Transport Transport { get; init; }
    [JsonPropertyName("method")] public string Method { get; init; } = "POST";
    [JsonPropertyName("path")] public string Path { get; init; } = "/v1/images/generations";
    [JsonPropertyName("content_type")] public string? ContentType { get; init; }
    [JsonPropertyName("headers")] public List<KeyValuePair<string, string>> Headers { get; init; } = [];
    /// <summary>False: no authorization header is added even when the run has an API key (the auth cases set their own).</summary>
    [JsonPropertyName("add_key")] public bool AddKey { get; init; } = true;
    [JsonPropertyName("expect")] public string? Expect { get; init; }
    [JsonIgnore] public byte[] Body { get; init; } = [];
    /// <summary>gRPC GenerateStream is server-streaming: every event is read.</summary>
    [JsonPropertyName("streaming")] public bool Streaming { get; init; }
}

/// <summary>What came back: an HTTP status, a gRPC status, a transport error, or nothing within the time limit (a hang).</summary>
public sealed record Outcome(string Kind, int? HttpStatus, string? GrpcStatus, double Milliseconds, string? Detail, long BodyBytes = 0)
{
    /// <summary>An error answer this large echoes the request back (a 20 MB model name in a 404 costs the server memory and log space).</summary>
    public const long MaxErrorBodyBytes = 64 << 10;

    public bool IsOversizedError => Kind == "http" && HttpStatus >= 400 && BodyBytes > MaxErrorBodyBytes;

    /// <summary>2xx / 4xx / 5xx for HTTP, grpc:CODE for gRPC, or hang / transport.</summary>
    public string Bucket => Kind switch
    {
        "http" => $"{HttpStatus / 100}xx",
        "grpc" => $"grpc:{GrpcStatus}",
        _ => Kind,
    };

    /// <summary>
    /// A defect of the server: an HTTP 5xx other than 503 (full/unavailable, asked for by the fault runs) and 504
    /// (the deadline the request itself set), a gRPC INTERNAL, UNKNOWN or DATA_LOSS, or a dropped connection.
    /// </summary>
    public bool IsDefect => Kind switch
    {
        "http" => HttpStatus is >= 500 and not 503 and not 504,
        "grpc" => GrpcStatus is "Internal" or "Unknown" or "DataLoss",
        "transport" => true,
        _ => false,
    };

    public bool IsHang => Kind == "hang";
}
