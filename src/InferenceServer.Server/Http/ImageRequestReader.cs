using System.Globalization;
using System.Text.Json;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Lora;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace InferenceServer.Server.Http;

/// <summary>How the answer is to be written (not part of the generation).</summary>
public enum ResponseFormat { Url, B64Json }

/// <summary>One images request as read from JSON or multipart: the job plus how to answer it.</summary>
public sealed record ImagesRequest(ImageJobRequest Job, ResponseFormat ResponseFormat)
{
    /// <summary>The durable-job fields (<c>POST /v1/jobs</c>); null on the images routes.</summary>
    public Jobs.JobFields? JobFields { get; init; }
}

/// <summary>
/// Reads <c>/v1/images/generations</c> (JSON) and <c>/v1/images/edits</c> (multipart/form-data, or JSON) into an
/// <see cref="ImageJobRequest"/>. Fields: OpenAI's (prompt, model, n, size, response_format, output_format,
/// output_compression; quality, style, user, background, moderation, input_fidelity, mask accepted and ignored) plus
/// Seedream's (aspect_ratio, resolution, seed, sequential_image_generation = <c>disabled</c>, watermark ignored) and
/// ours (steps, guidance, <c>loras</c>: <c>[{"name": "...", "scale": 0.8}]</c>, in multipart a text field holding that JSON
/// array). Unknown fields are ignored; a field of the wrong type is a 400 naming it.
/// References: multipart files <c>image</c> / <c>image[]</c> (repeated), or in JSON <c>image</c> as a base64 string,
/// a data: URL, or an array of them (Seedream's form). Range checks other than the response's own fields are the
/// scheduler's (one validation for both front ends).
/// </summary>
public static class ImageRequestReader
{
    /// <summary>ENOSPC: on Unix .NET puts the raw errno into an IOException's HResult (the message is matched too).</summary>
    const int DiskFullHResult = 28;
    /// <summary>Header carrying the client's deadline in seconds (decimals allowed), e.g. <c>X-Request-Timeout: 30</c>.</summary>
    public const string TimeoutHeader = "X-Request-Timeout";
    /// <summary>Longest deadline a client may ask for (a day); longer ones are refused rather than clamped.</summary>
    public static readonly TimeSpan MaxTimeout = TimeSpan.FromDays(1);

    /// <param name="jobFields">Also read the durable-job fields (priority, idempotency_key or the Idempotency-Key header, webhook_url, labels, batch, max_attempts).</param>
    public static async Task<ImagesRequest> ReadAsync(HttpContext context, ServerOptions options, string requestId, CancellationToken ct, bool jobFields = false)
    {
        var request = context.Request;
        if (IsJson(request.ContentType))
        {
            var body = await ReadBodyAsync(request, options.Limits.MaxRequestBytes, ct).ConfigureAwait(false);
            JsonDocument doc;
            try { doc = JsonDocument.Parse(body); }
            catch (JsonException e)
            {
                throw new ServiceException(ErrorKind.InvalidArgument,
                    $"the body is not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {FirstSentence(e.Message)}");
            }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    throw new ServiceException(ErrorKind.InvalidArgument, "the body must be a JSON object");
                var json = new JsonFields(doc.RootElement);
                return WithJobFields(Build(json, json.Images(), request, requestId), json, request, jobFields);
            }
        }
        if (!request.HasFormContentType)
            throw new ServiceException(ErrorKind.InvalidArgument,
                $"Content-Type {ClientText.Quote(request.ContentType ?? "(none)")} is not supported: send application/json or multipart/form-data", "Content-Type");

        context.Features.Set<IFormFeature>(new FormFeature(request, new FormOptions
        {
            MultipartBodyLengthLimit = options.Limits.MaxRequestBytes,
            ValueLengthLimit = (int)Math.Min(int.MaxValue, options.Limits.MaxRequestBytes),
            ValueCountLimit = 256,
        }));
        IFormCollection form;
        try { form = await request.ReadFormAsync(ct).ConfigureAwait(false); }
        catch (InvalidDataException e)
        {
            throw new ServiceException(ErrorKind.InvalidArgument, $"the multipart body is malformed: {e.Message}");
        }
        catch (IOException e) when (e is not BadHttpRequestException && !ct.IsCancellationRequested) // a body over the limit stays 413
        {
            // Large parts are buffered to a temporary file: a full disk is the server's problem (503), a body that ends
            // before its final boundary is the client's (400).
            if (e.HResult == DiskFullHResult || e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase))
                throw new ServiceException(ErrorKind.Unavailable, "the server's temporary storage for uploads is full; retry later or send smaller images");
            throw new ServiceException(ErrorKind.InvalidArgument, $"the multipart body is malformed or truncated: {e.Message}");
        }
        var files = form.Files.Where(f => f.Name is "image" or "image[]").ToList();
        // Text parts named image are base64 / data: URLs (curl -F "image=data:image/png;base64,...").
        var texts = form.Where(kv => kv.Key is "image" or "image[]").SelectMany(kv => kv.Value).Where(v => !string.IsNullOrEmpty(v)).ToList();
        // Checked here as well as in the pipeline's Prepare: it stops the body read before too many files are buffered.
        if (files.Count + texts.Count > options.Limits.MaxReferences)
            throw ServiceException.Invalid("image", $"image: {files.Count + texts.Count} reference images given, at most {options.Limits.MaxReferences} are allowed");
        var references = texts.Select((t, i) => DecodeImageString(t!, files.Count + i)).ToList();
        foreach (var file in files)
        {
            using var stream = file.OpenReadStream();
            var bytes = new byte[file.Length];
            await stream.ReadExactlyAsync(bytes, ct).ConfigureAwait(false);
            references.Add(bytes);
        }
        var fields = new FormFields(form);
        return WithJobFields(Build(fields, references, request, requestId), fields, request, jobFields);
    }

    static ImagesRequest WithJobFields(ImagesRequest r, IFields f, HttpRequest request, bool read)
    {
        if (!read) return r;
        string? key = f.String("idempotency_key");
        if (request.Headers.TryGetValue("Idempotency-Key", out var header) && header.ToString() is { Length: > 0 } h)
        {
            if (key is not null && key != h)
                throw ServiceException.Invalid("idempotency_key", "idempotency_key: the body field and the Idempotency-Key header differ; send one");
            key = h;
        }
        long? attempts = f.Long("max_attempts");
        return r with
        {
            JobFields = new Jobs.JobFields
            {
                Priority = f.Int("priority") ?? 0, IdempotencyKey = key, WebhookUrl = f.String("webhook_url"), Labels = f.Labels(),
                Batch = f.String("batch"), MaxAttempts = attempts is null ? null : (int)Math.Clamp(attempts.Value, -1, 1000),
            },
        };
    }

    static ImagesRequest Build(IFields fields, List<byte[]> references, HttpRequest request, string requestId)
    {
        string? sequential = fields.String("sequential_image_generation");
        if (sequential is not null && !sequential.Equals("disabled", StringComparison.OrdinalIgnoreCase))
            throw ServiceException.Invalid("sequential_image_generation", $"sequential_image_generation {ClientText.Quote(sequential)}: only 'disabled' is supported");
        if (fields.Bool("stream") == true)
            throw ServiceException.Invalid("stream", "stream: streaming responses are not supported over HTTP; use the gRPC API for progress events");

        var responseFormat = fields.String("response_format")?.Trim().ToLowerInvariant() switch
        {
            null or "" or "url" => ResponseFormat.Url,
            "b64_json" => ResponseFormat.B64Json,
            var other => throw ServiceException.Invalid("response_format", $"response_format {ClientText.Quote(other)}: use url or b64_json"),
        };
        var format = ImageFormat.Png;
        if (fields.String("output_format") is { Length: > 0 } f && !ImageFormats.TryParse(f, out format))
            throw ServiceException.Invalid("output_format", $"output_format {ClientText.Quote(f)}: use one of {ImageFormats.Accepted}");
        int? quality = fields.Int("output_compression");                 // range checked once, by the pipeline
        long? seed = fields.Long("seed");
        if (seed == -1) seed = null;   // Seedream: -1 = random; the range is the pipeline's (GenerationRequest.MaxSeed)

        var generation = new GenerationRequest
        {
            Prompt = fields.String("prompt") ?? "",
            References = references,
            Size = new SizeRequest(fields.String("size"), fields.String("aspect_ratio"), fields.String("resolution")),
            Count = fields.Int("n") ?? 1,
            Seed = seed,
            Steps = fields.Int("steps"),
            Guidance = fields.Double("guidance"),
            Format = format,
            Quality = quality,
        };
        return new ImagesRequest(new ImageJobRequest
        {
            Model = fields.String("model"),
            Loras = fields.Loras(),
            Generation = generation,
            RequestId = requestId,
            Timeout = Timeout(request),
            Origin = "http",
        }, responseFormat);
    }

    static TimeSpan? Timeout(HttpRequest request)
    {
        if (!request.Headers.TryGetValue(TimeoutHeader, out var values)) return null;
        string text = values.ToString().Trim();
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) || !(seconds > 0) || seconds > MaxTimeout.TotalSeconds)
            throw ServiceException.Invalid(TimeoutHeader, $"{TimeoutHeader} {ClientText.Quote(text)}: a positive number of seconds, at most {MaxTimeout.TotalSeconds:0}, is expected");
        return TimeSpan.FromSeconds(seconds);
    }

    static bool IsJson(string? contentType) =>
        contentType is not null && MediaTypeIs(contentType, "application/json");

    static bool MediaTypeIs(string contentType, string mediaType)
    {
        int semi = contentType.IndexOf(';');
        return (semi < 0 ? contentType : contentType[..semi]).Trim().Equals(mediaType, StringComparison.OrdinalIgnoreCase);
    }

    static string FirstSentence(string message)
    {
        int i = message.IndexOf(". ", StringComparison.Ordinal);
        return i < 0 ? message : message[..(i + 1)];
    }

    static ServiceException WrongType(string name, string expected, string got, string? param = null) =>
        ServiceException.Invalid(param ?? name, $"{name}: expected {expected}, got {got}");

    /// <summary>Typed access to request fields; a present field of the wrong type throws a 400 naming it.</summary>
    interface IFields
    {
        string? String(string name);
        long? Long(string name);
        double? Double(string name);
        bool? Bool(string name);
        List<RequestedLora> Loras();
        /// <summary><c>labels</c>: an object of strings (multipart: a text field holding that JSON object).</summary>
        Dictionary<string, string> Labels();

        int? Int(string name)
        {
            long? v = Long(name);
            return v is null ? null : v is < int.MinValue or > int.MaxValue ? throw WrongType(name, "a 32-bit integer", v.Value.ToString(CultureInfo.InvariantCulture)) : (int)v;
        }
    }

    sealed class JsonFields(JsonElement root) : IFields
    {
        bool Get(string name, out JsonElement value) =>
            root.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

        public string? String(string name) => !Get(name, out var v) ? null
            : v.ValueKind == JsonValueKind.String ? Text(v, name) : throw WrongType(name, "a string", Describe(v));

        public long? Long(string name) => !Get(name, out var v) ? null
            : v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long l) ? l : throw WrongType(name, "an integer", Describe(v));

        public double? Double(string name) => !Get(name, out var v) ? null
            : v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && double.IsFinite(d) ? d : throw WrongType(name, "a finite number", Describe(v));

        public bool? Bool(string name) => !Get(name, out var v) ? null
            : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw WrongType(name, "true or false", Describe(v));

        public List<RequestedLora> Loras() => Get("loras", out var v) ? ReadLoras(v) : [];

        public Dictionary<string, string> Labels() => Get("labels", out var v) ? ReadLabels(v) : [];

        /// <summary>Seedream's JSON references: <c>image</c> as a string or an array of strings (base64 or data: URLs).</summary>
        public List<byte[]> Images()
        {
            if (!Get("image", out var v)) return [];
            var items = v.ValueKind switch
            {
                JsonValueKind.String => [v],
                JsonValueKind.Array => v.EnumerateArray().ToList(),
                _ => throw WrongType("image", "a base64 string, a data: URL or an array of them", Describe(v)),
            };
            return items.Select((item, i) => item.ValueKind == JsonValueKind.String
                ? DecodeImageString(Text(item, $"image[{i}]", "image"), i)
                : throw WrongType("image", "a base64 string or a data: URL", Describe(item))).ToList();
        }

        internal static string Describe(JsonElement v) => v.ValueKind switch
        {
            JsonValueKind.String => TryText(v) is { } t ? $"the string {ClientText.Quote(t)}" : "a string that is not valid Unicode",
            JsonValueKind.Number => $"the number {ClientText.Quote(v.GetRawText())}",
            JsonValueKind.True or JsonValueKind.False => $"the boolean {v.GetRawText()}",
            JsonValueKind.Array => "an array",
            JsonValueKind.Object => "an object",
            _ => v.ValueKind.ToString().ToLowerInvariant(),
        };

    }

    /// <summary>
    /// The whole body in one array the GC owns. JsonDocument.ParseAsync(stream) rents its buffer from ArrayPool.Shared,
    /// which keeps large arrays per thread until a trim long after: RSS grew ~80 MB per 20 MB JSON body and stayed.
    /// A declared length over the limit is 413 before anything is allocated; Kestrel enforces the limit on chunked bodies.
    /// </summary>
    static async Task<byte[]> ReadBodyAsync(HttpRequest request, long limit, CancellationToken ct)
    {
        if (request.ContentLength is { } declared)
        {
            if (declared > limit)
                throw new ServiceException(ErrorKind.TooLarge, $"the body is {declared:N0} bytes; the limit is {limit:N0} bytes (InferenceServer:Limits:MaxRequestBytes)");
            var buffer = new byte[declared];
            await request.Body.ReadExactlyAsync(buffer, ct).ConfigureAwait(false);
            return buffer;
        }
        using var copy = new MemoryStream();
        await request.Body.CopyToAsync(copy, ct).ConfigureAwait(false);
        return copy.ToArray();
    }

    /// <summary>A JSON string's value; invalid UTF-8 or an unpaired surrogate (<c>"\ud800"</c>) is a 400 naming the field, not a 500.</summary>
    static string Text(JsonElement v, string field, string? param = null) => TryText(v)
        ?? throw ServiceException.Invalid(param ?? field, $"{field}: the string is not valid Unicode (invalid UTF-8 or an unpaired surrogate)");

    /// <summary>A JSON string's value, or null when it is not valid Unicode.</summary>
    static string? TryText(JsonElement v)
    {
        try { return v.GetString(); }
        catch (InvalidOperationException) { return null; }
    }

    /// <summary><c>[{"name": "style", "scale": 0.8}, ...]</c>: a name (string) and an optional scale (number, default 1).</summary>
    static List<RequestedLora> ReadLoras(JsonElement v)
    {
        if (v.ValueKind != JsonValueKind.Array) throw WrongType("loras", "an array of {\"name\", \"scale\"} objects", JsonFields.Describe(v));
        var result = new List<RequestedLora>();
        foreach (var (item, i) in v.EnumerateArray().Select((item, i) => (item, i)))
        {
            if (item.ValueKind != JsonValueKind.Object) throw WrongType($"loras[{i}]", "an object {\"name\", \"scale\"}", JsonFields.Describe(item), "loras");
            if (!item.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                throw ServiceException.Invalid("loras", $"loras[{i}].name: a string naming an adapter is required");
            double scale = 1.0;
            if (item.TryGetProperty("scale", out var s) && s.ValueKind != JsonValueKind.Null)
                scale = s.ValueKind == JsonValueKind.Number && s.TryGetDouble(out double d) ? d : throw WrongType($"loras[{i}].scale", "a number", JsonFields.Describe(s), "loras");
            result.Add(new RequestedLora(Text(name, $"loras[{i}].name", "loras"), scale));
        }
        return result;
    }

    static Dictionary<string, string> ReadLabels(JsonElement v)
    {
        if (v.ValueKind != JsonValueKind.Object) throw WrongType("labels", "an object of strings ({\"shot\": \"sh010\"})", JsonFields.Describe(v));
        var labels = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var p in v.EnumerateObject())
            labels[p.Name] = p.Value.ValueKind == JsonValueKind.String ? Text(p.Value, $"labels.{p.Name}", "labels")
                : throw WrongType($"labels.{p.Name}", "a string", JsonFields.Describe(p.Value), "labels");
        return labels;
    }

    static byte[] DecodeImageString(string text, int index)
    {
        if (text.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || text.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
            throw ServiceException.Invalid("image", $"image {index + 1}: image URLs are not fetched by this server; send the bytes (base64, a data: URL or multipart)");
        if (text.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
        {
            int comma = text.IndexOf(',');
            if (comma < 0 || !text[..comma].EndsWith(";base64", StringComparison.OrdinalIgnoreCase))
                throw ServiceException.Invalid("image", $"image {index + 1}: a data: URL must be base64 (data:image/png;base64,...)");
            text = text[(comma + 1)..];
        }
        try { return Convert.FromBase64String(text); }
        catch (FormatException) { throw ServiceException.Invalid("image", $"image {index + 1}: not valid base64"); }
    }

    sealed class FormFields(IFormCollection form) : IFields
    {
        public string? String(string name) =>
            form.TryGetValue(name, out var v) && v.Count > 0 ? v[^1] : null;

        public long? Long(string name) => String(name) is not { } s ? null
            : long.TryParse(s.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l) ? l : throw WrongType(name, "an integer", ClientText.Quote(s));

        public double? Double(string name) => String(name) is not { } s ? null
            : double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? d : throw WrongType(name, "a number", ClientText.Quote(s));

        public bool? Bool(string name) => String(name) is not { } s ? null
            : bool.TryParse(s.Trim(), out bool b) ? b : throw WrongType(name, "true or false", ClientText.Quote(s));

        /// <summary>A text field <c>loras</c> holding the JSON array (multipart has no nested fields).</summary>
        public List<RequestedLora> Loras()
        {
            if (String("loras") is not { } text || string.IsNullOrWhiteSpace(text)) return [];
            JsonDocument doc;
            try { doc = JsonDocument.Parse(text); }
            catch (JsonException) { throw WrongType("loras", "a JSON array of {\"name\", \"scale\"} objects", ClientText.Quote(text)); }
            using (doc) return ReadLoras(doc.RootElement);
        }

        public Dictionary<string, string> Labels()
        {
            if (String("labels") is not { } text || string.IsNullOrWhiteSpace(text)) return [];
            JsonDocument doc;
            try { doc = JsonDocument.Parse(text); }
            catch (JsonException) { throw WrongType("labels", "a JSON object of strings", ClientText.Quote(text)); }
            using (doc) return ReadLabels(doc.RootElement);
        }
    }
}
