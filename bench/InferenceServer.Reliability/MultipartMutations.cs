using System.Text;

namespace InferenceServer.Reliability;

/// <summary>
/// multipart/form-data bodies for /v1/images/edits written byte by byte: valid forms carrying broken images, and broken
/// forms (truncated, wrong or missing boundary, parts without names, too many parts, huge part headers).
/// </summary>
public static class MultipartMutations
{
    public sealed record Part(string Name, byte[] Data, string? FileName = null, string? ContentType = null);

    public static byte[] Form(string boundary, IEnumerable<Part> parts, bool close = true)
    {
        var s = new MemoryStream();
        foreach (var p in parts)
        {
            s.Write(Encoding.UTF8.GetBytes($"--{boundary}\r\nContent-Disposition: form-data; name=\"{p.Name}\""));
            if (p.FileName is not null) s.Write(Encoding.UTF8.GetBytes($"; filename=\"{p.FileName}\""));
            s.Write("\r\n"u8);
            if (p.ContentType is not null) s.Write(Encoding.UTF8.GetBytes($"Content-Type: {p.ContentType}\r\n"));
            s.Write("\r\n"u8);
            s.Write(p.Data);
            s.Write("\r\n"u8);
        }
        if (close) s.Write(Encoding.UTF8.GetBytes($"--{boundary}--\r\n"));
        return s.ToArray();
    }

    static Part Text(string name, string value) => new(name, Encoding.UTF8.GetBytes(value));

    static List<Part> Fields() => [Text("prompt", "fuzz edit"), Text("size", "64x64"), Text("steps", "1"), Text("response_format", "b64_json")];

    static string Mime(string format) => format switch { "jpeg" => "image/jpeg", "gif" => "image/gif", "webp" => "image/webp", "avif" => "image/avif", _ => "image/png" };

    /// <summary>An edit whose one to three reference files are mutations of the samples (some valid, so the edit path runs).</summary>
    public static FuzzCase Images(Random rng, ImageSamples samples)
    {
        var parts = Fields();
        var names = new List<string>();
        int count = rng.Next(1, 4);
        var formats = samples.ByFormat.Keys.ToArray();
        for (int i = 0; i < count; i++)
        {
            string format = formats[rng.Next(formats.Length)];
            string kind = samples.Kinds[rng.Next(samples.Kinds.Length)];
            var (bytes, name) = ImageMutations.Make(samples, format, kind, rng);
            // Sometimes lie about the type: the server must sniff the bytes, not trust the label.
            string mime = rng.Next(5) == 0 ? Mime(formats[rng.Next(formats.Length)]) : Mime(format);
            parts.Add(new Part(rng.Next(2) == 0 ? "image" : "image[]", bytes, $"ref{i}.{format}", mime));
            names.Add(name);
        }
        return Case("image", string.Join("; ", names), "multipart/form-data; boundary=fuzzb", Form("fuzzb", parts));
    }

    /// <summary>A JSON edit whose image field is a base64 string or data: URL of a mutated sample (Seedream's form).</summary>
    public static FuzzCase ImagesAsJson(Random rng, ImageSamples samples)
    {
        var formats = samples.ByFormat.Keys.ToArray();
        string format = formats[rng.Next(formats.Length)];
        var (bytes, name) = ImageMutations.Make(samples, format, samples.Kinds[rng.Next(samples.Kinds.Length)], rng);
        string b64 = Convert.ToBase64String(bytes);
        string value = rng.Next(4) switch
        {
            0 => b64,
            1 => $"data:{Mime(format)};base64,{b64}",
            2 => $"data:text/plain;base64,{b64}",
            _ => b64.Length > 4 ? b64[..(b64.Length - rng.Next(1, 4))] : b64 + "=",   // broken padding
        };
        var fields = JsonMutations.Base();
        fields.Add(("image", rng.Next(2) == 0 ? $"\"{value}\"" : $"[\"{value}\"]"));
        return new FuzzCase
        {
            Class = "image-json", Name = name, Transport = Transport.Http, Path = "/v1/images/edits",
            ContentType = "application/json", Body = JsonMutations.Object(fields),
        };
    }

    /// <summary>Broken multipart framing around an otherwise valid edit.</summary>
    public static FuzzCase Framing(Random rng, ImageSamples samples)
    {
        var parts = Fields();
        parts.Add(new Part("image", samples.Valid, "a.png", "image/png"));
        byte[] valid = Form("fuzzb", parts);
        const string ct = "multipart/form-data; boundary=fuzzb";
        return rng.Next(14) switch
        {
            0 => Case("multipart", "truncated body", ct, valid[..rng.Next(1, valid.Length)]),
            1 => Case("multipart", "no closing boundary", ct, Form("fuzzb", parts, close: false)),
            2 => Case("multipart", "wrong boundary in the header", "multipart/form-data; boundary=other", valid),
            3 => Case("multipart", "no boundary parameter", "multipart/form-data", valid),
            4 => Case("multipart", "boundary of 200 chars", $"multipart/form-data; boundary={new string('b', 200)}", Form(new string('b', 200), parts)),
            5 => Case("multipart", "empty body", ct, []),
            6 => Case("multipart", "part without a name", ct, Encoding.UTF8.GetBytes("--fuzzb\r\nContent-Disposition: form-data\r\n\r\nx\r\n--fuzzb--\r\n")),
            7 => Case("multipart", "part without headers", ct, Encoding.UTF8.GetBytes("--fuzzb\r\n\r\nx\r\n--fuzzb--\r\n")),
            8 => Case("multipart", "300 parts", ct, Form("fuzzb", [.. parts, .. Enumerable.Range(0, 300).Select(i => Text($"f{i}", "v"))])),
            9 => Case("multipart", "a 100 KB part header", ct, Encoding.UTF8.GetBytes($"--fuzzb\r\nContent-Disposition: form-data; name=\"prompt\"\r\nX-Big: {new string('h', 100_000)}\r\n\r\nx\r\n--fuzzb--\r\n")),
            10 => Case("multipart", "11 images (over the reference limit)", ct, Form("fuzzb", [.. Fields(), .. Enumerable.Range(0, 11).Select(i => new Part("image[]", samples.Valid, $"{i}.png", "image/png"))])),
            11 => Case("multipart", "form fields of the wrong type", ct, Form("fuzzb", [Text("prompt", "x"), Text("n", "two"), Text("steps", "1e9"), Text("seed", "-5"), Text("loras", "[{\"name\":"), new Part("image", samples.Valid, "a.png", "image/png")])),
            12 => Case("multipart", "url-encoded form", "application/x-www-form-urlencoded", Encoding.UTF8.GetBytes("prompt=x&size=64x64&steps=1&image=%FF%FE")),
            _ => Case("multipart", "a 1 MB image part of zeros", ct, Form("fuzzb", [.. Fields(), new Part("image", new byte[1 << 20], "z.png", "image/png")])),
        };
    }

    static FuzzCase Case(string cls, string name, string contentType, byte[] body) =>
        new() { Class = cls, Name = name, Transport = Transport.Http, Path = "/v1/images/edits", ContentType = contentType, Body = body };
}
