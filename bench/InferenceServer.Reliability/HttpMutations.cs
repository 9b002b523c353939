using System.Text;

namespace InferenceServer.Reliability;

/// <summary>
/// Requests that are wrong at the HTTP level rather than in the body: methods, routes, content types (including
/// <c>application/grpc</c> on the HTTP routes), header values (timeouts, request ids), and API-key tricks.
/// </summary>
public static class HttpMutations
{
    static readonly byte[] ValidJson = JsonMutations.Object(JsonMutations.Base());

    static FuzzCase Case(string name, string method, string path, string? contentType, byte[] body, params (string, string)[] headers) => new()
    {
        Class = "http", Name = name, Transport = Transport.Http, Method = method, Path = path, ContentType = contentType, Body = body,
        Headers = [.. headers.Select(h => new KeyValuePair<string, string>(h.Item1, h.Item2))],
    };

    public static FuzzCase Protocol(Random rng)
    {
        string[] timeouts = ["-1", "0", "NaN", "1e300", "abc", "", "86401", "0.000001", "Infinity"];
        string[] contentTypes = ["application/grpc", "application/grpc+proto", "text/plain", "application/json; charset=utf-16", "application/JSON",
            "application/json;;;", "application/xml", "*/*", "multipart/mixed; boundary=x", "application/json, multipart/form-data"];
        return rng.Next(12) switch
        {
            0 => Case("GET on a POST route", "GET", "/v1/images/generations", null, []),
            1 => Case("PUT on a POST route", "PUT", "/v1/images/edits", "application/json", ValidJson),
            2 => Case("unknown route", "POST", "/v1/" + new string('x', rng.Next(1, 2000)), "application/json", ValidJson),
            3 => Case("files route, unknown id", "GET", "/v1/images/files/" + Uri.EscapeDataString("../../etc/passwd"), null, []),
            4 => Case("files route, long id", "GET", "/v1/images/files/" + new string('f', 4000), null, []),
            5 => Case("models route, odd id", "GET", "/v1/models/" + Uri.EscapeDataString("%00\u00e9/.."), null, []),
            6 => Case("content type " + contentTypes[rng.Next(contentTypes.Length)], "POST", "/v1/images/generations", contentTypes[rng.Next(contentTypes.Length)], ValidJson),
            7 => Case("X-Request-Timeout header", "POST", "/v1/images/generations", "application/json", ValidJson, ("X-Request-Timeout", timeouts[rng.Next(timeouts.Length)])),
            8 => Case("X-Request-Id of 10000 chars", "POST", "/v1/images/generations", "application/json", ValidJson, ("X-Request-Id", new string('i', 10_000))),
            9 => Case("Content-Encoding gzip, body not gzip", "POST", "/v1/images/generations", "application/json", ValidJson, ("Content-Encoding", "gzip")),
            10 => Case("gRPC path on the HTTP port", "POST", GrpcMutations.Service + "Generate", "application/grpc", GrpcMutations.Base().ToArray()),
            _ => Case("no content type", "POST", "/v1/images/generations", null, ValidJson),
        };
    }

    /// <summary>
    /// With an API key configured, every one of these must be refused with 401 / UNAUTHENTICATED: no header, another
    /// key, another scheme, an empty bearer, and <c>content-type: application/grpc</c> on the HTTP routes (which once
    /// skipped the check).
    /// </summary>
    public static FuzzCase Auth(Random rng, string key)
    {
        string[] bad = ["", "Bearer", "Bearer ", $"Bearer {key}x", $"Basic {Convert.ToBase64String(Encoding.UTF8.GetBytes(key))}", $"bearer  {key[..^1]}", $"Bearer {new string('k', 5000)}", "Token " + key];
        string auth = bad[rng.Next(bad.Length)];
        var headers = auth.Length == 0 ? new List<KeyValuePair<string, string>>() : [new("Authorization", auth)];
        return rng.Next(5) switch
        {
            0 or 1 => new FuzzCase
            {
                Class = "auth", Name = $"HTTP generation with authorization '{Trim(auth)}'", Transport = Transport.Http, Path = "/v1/images/generations",
                ContentType = "application/json", Body = ValidJson, Headers = headers, AddKey = false, Expect = "401",
            },
            2 => new FuzzCase
            {
                Class = "auth", Name = $"HTTP generation as content-type application/grpc, authorization '{Trim(auth)}'", Transport = Transport.Http,
                Path = rng.Next(2) == 0 ? "/v1/images/generations" : "/v1/models", Method = "POST", ContentType = "application/grpc",
                Body = ValidJson, Headers = headers, AddKey = false, Expect = "401",
            },
            _ => new FuzzCase
            {
                Class = "auth", Name = $"gRPC Generate with authorization '{Trim(auth)}'", Transport = Transport.Grpc, Path = GrpcMutations.Service + "Generate",
                Body = GrpcMutations.Base().ToArray(), Headers = [.. headers.Select(h => new KeyValuePair<string, string>("authorization", h.Value))],
                AddKey = false, Expect = "Unauthenticated",
            },
        };
    }

    static string Trim(string s) => s.Length <= 40 ? s : s[..40] + "...";
}
