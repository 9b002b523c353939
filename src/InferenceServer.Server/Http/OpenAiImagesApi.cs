using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Lora;
using InferenceServer.Server.Observability;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Http;

/// <summary>
/// The OpenAI-compatible HTTP API: <c>POST /v1/images/generations</c>, <c>POST /v1/images/edits</c>,
/// <c>GET /v1/images/files/{id}</c> (url responses), <c>GET /v1/models</c>, <c>GET /v1/models/{id}</c> and
/// <c>GET /v1/loras</c> (the adapter folder; not an OpenAI route).
/// <para>The body is OpenAI's (<c>created</c>, <c>data[].url | b64_json</c>, <c>data[].revised_prompt</c>, <c>usage</c>,
/// <c>size</c>, <c>output_format</c>) plus extras the OpenAI clients ignore: <c>data[].seed</c>, <c>model</c>,
/// <c>steps</c>, <c>timings</c> (milliseconds: queue, each pipeline stage summed over images, total) and
/// <c>request_id</c>. <c>usage</c> counts latent tokens: output = images x (W/16) x (H/16).</para>
/// <para>Headers: <c>X-Request-Timeout: seconds</c> sets the job's deadline (504 when passed); <c>X-Request-Id</c> in and out.
/// A client that disconnects cancels its job.</para>
/// </summary>
public static class OpenAiImagesApi
{
    /// <summary>Adds the middleware (request id, API keys, last-resort errors) and maps every route. Call once on the app.</summary>
    public static WebApplication MapOpenAiImages(this WebApplication app)
    {
        var options = app.Services.GetRequiredService<IOptions<ServerOptions>>().Value;
        var api = new Handlers(options, new ImageFileStore(options.Files), app.Services.GetRequiredService<IImageGenerator>(),
            app.Services.GetRequiredService<ServerMetrics>(), app.Services.GetRequiredService<LoraLibrary>(),
            app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("InferenceServer.Http"));
        app.UseMiddleware<OpenAiHttpMiddleware>(options);
        app.MapPost("/v1/images/generations", context => api.Images(context, edit: false));
        app.MapPost("/v1/images/edits", context => api.Images(context, edit: true));
        app.MapGet("/v1/images/files/{id}", (HttpContext context, string id) => api.File(context, id));
        app.MapGet("/v1/models", api.Models);
        app.MapGet("/v1/models/{id}", (HttpContext context, string id) => api.Model(context, id));
        app.MapGet("/v1/loras", api.Loras);
        app.Map("/v1/{**rest}", context => OpenAiErrors.WriteAsync(context,
            new ServiceException(ErrorKind.NotFound, $"no route {context.Request.Method} {context.Request.Path}")));
        return app;
    }

    /// <summary>Prefix of the urls the server hands out (image files, job status and images): the configured public base, else the request's own scheme and host.</summary>
    internal static string PublicBase(HttpContext context, FileStoreOptions files) =>
        files.PublicBaseUrl is { Length: > 0 } configured ? configured.TrimEnd('/')
            : $"{context.Request.Scheme}://{context.Request.Host}{context.Request.PathBase}";

    sealed class Handlers(ServerOptions options, ImageFileStore files, IImageGenerator generator, ServerMetrics metrics, LoraLibrary loras, ILogger log)
    {
        public async Task Images(HttpContext context, bool edit)
        {
            var started = Stopwatch.StartNew();
            var ct = context.RequestAborted;
            int status;
            try
            {
                var request = await ImageRequestReader.ReadAsync(context, options, OpenAiHttpMiddleware.RequestId(context), ct).ConfigureAwait(false);
                if (edit && request.Job.Generation.References.Count == 0)
                    throw ServiceException.Invalid("image", "image: an edit needs at least one input image (multipart field image or image[])");
                var result = await generator.GenerateAsync(request.Job, null, ct).ConfigureAwait(false);
                await WriteResultAsync(context, request, result).ConfigureAwait(false);
                status = StatusCodes.Status200OK;
            }
            catch (Exception e) when (Classify(e, ct) is { } error)
            {
                if (error.Kind is ErrorKind.Internal) log.LogError(e, "images request failed");
                else log.LogInformation("images request answered {Kind}: {Message}", error.Kind, ClientText.ForLog(error.Message));
                await OpenAiErrors.WriteAsync(context, error).ConfigureAwait(false);
                status = OpenAiErrors.Status(error.Kind);
            }
            metrics.Answered("http", status.ToString(CultureInfo.InvariantCulture), status != StatusCodes.Status200OK, started.Elapsed.TotalSeconds);
        }

        /// <summary>Every failure a request can meet, as the error to answer; null only for the response already started.</summary>
        static ServiceException? Classify(Exception e, CancellationToken aborted) => e switch
        {
            ServiceException s => s,
            BadHttpRequestException b when b.StatusCode == StatusCodes.Status413PayloadTooLarge =>
                new ServiceException(ErrorKind.TooLarge, $"the request body is larger than the limit: {b.Message}", inner: b),
            BadHttpRequestException b => new ServiceException(ErrorKind.InvalidArgument, $"the request could not be read: {b.Message}", inner: b),
            _ when aborted.IsCancellationRequested => new ServiceException(ErrorKind.Cancelled, "the request was cancelled by the client", inner: e),
            InvalidDataException d => new ServiceException(ErrorKind.InvalidArgument, $"the request body is malformed: {d.Message}", inner: d),
            _ => new ServiceException(ErrorKind.Internal, "internal error", inner: e),
        };

        async Task WriteResultAsync(HttpContext context, ImagesRequest request, JobResult job)
        {
            var g = job.Generation;
            string? baseUrl = request.ResponseFormat == ResponseFormat.Url ? BaseUrl(context) : null;
            // Store first: a store refusal is still answerable as an error before the response starts. The images of one
            // answer must fit together, or the later ones would evict the earlier ones before the client fetched them.
            long total = g.Images.Sum(i => (long)i.Image.Bytes.Length);
            if (baseUrl is not null && total > options.Files.MaxBytes)
                throw new ServiceException(ErrorKind.TooLarge,
                    $"the images ({total:N0} bytes) are larger than the url store ({options.Files.MaxBytes:N0} bytes); use response_format=b64_json", "response_format");
            var urls = baseUrl is null ? null
                : g.Images.Select(i => $"{baseUrl}/v1/images/files/{files.Add(i.Image.Bytes, i.Image.MimeType)}{i.Image.Format.Extension()}").ToList();

            var response = context.Response;
            response.StatusCode = StatusCodes.Status200OK;
            response.ContentType = "application/json";
            await using var json = new Utf8JsonWriter(response.Body);
            json.WriteStartObject();
            json.WriteNumber("created", DateTimeOffset.UtcNow.ToUnixTimeSeconds());
            json.WriteStartArray("data");
            for (int i = 0; i < g.Images.Count; i++)
            {
                var image = g.Images[i];
                json.WriteStartObject();
                if (urls is not null) json.WriteString("url", urls[i]);
                else json.WriteBase64String("b64_json", image.Image.Bytes);
                json.WriteNull("revised_prompt");
                json.WriteNumber("seed", image.Seed);
                json.WriteString("size", $"{image.Width}x{image.Height}");
                json.WriteEndObject();
                if (json.BytesPending > 1 << 20) await json.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            }
            json.WriteEndArray();
            json.WriteString("size", $"{g.Width}x{g.Height}");
            json.WriteString("output_format", FormatName(request.Job.Generation.Format));
            long outputTokens = (long)g.Images.Count * (g.Width / 16) * (g.Height / 16);
            json.WriteStartObject("usage");
            json.WriteNumber("input_tokens", 0);
            json.WriteNumber("output_tokens", outputTokens);
            json.WriteNumber("total_tokens", outputTokens);
            json.WriteStartObject("input_tokens_details");
            json.WriteNumber("text_tokens", 0);
            json.WriteNumber("image_tokens", 0);
            json.WriteEndObject();
            json.WriteEndObject();
            json.WriteString("model", job.Model);
            json.WriteNumber("steps", g.Steps);
            json.WriteString("request_id", job.RequestId);
            json.WriteStartObject("timings");
            json.WriteNumber("queue", Math.Round(job.QueueMilliseconds, 3));
            foreach (var stage in g.Timings.GroupBy(t => t.Name))
                json.WriteNumber(stage.Key, Math.Round(stage.Sum(t => t.Milliseconds), 3));
            json.WriteNumber("total", Math.Round(job.TotalMilliseconds, 3));
            json.WriteEndObject();
            json.WriteEndObject();
            await json.FlushAsync(CancellationToken.None).ConfigureAwait(false);
        }

        string BaseUrl(HttpContext context) => PublicBase(context, options.Files);

        public async Task File(HttpContext context, string id)
        {
            // The url carries the image's own extension; another one (.jpg on a PNG) is not this file: 404, not a mislabelled body.
            int dot = id.IndexOf('.');
            string? extension = dot >= 0 ? id[dot..] : null;
            if (dot >= 0) id = id[..dot];
            if (!files.TryGet(id, out var bytes, out var contentType)
                || (extension is not null && !(ImageFormats.TryParse(extension[1..], out var f) && f.MimeType() == contentType)))
            {
                await OpenAiErrors.WriteAsync(context, new ServiceException(ErrorKind.NotFound,
                    "no such image: it expired or never existed (url images are kept for a limited time)", "id")).ConfigureAwait(false);
                return;
            }
            context.Response.ContentType = contentType;
            context.Response.ContentLength = bytes.Length;
            context.Response.Headers.CacheControl = "private, max-age=" + (long)options.Files.Expiry.TotalSeconds;
            await context.Response.Body.WriteAsync(bytes, context.RequestAborted).ConfigureAwait(false);
        }

        public async Task Models(HttpContext context)
        {
            var response = context.Response;
            response.ContentType = "application/json";
            await using var json = new Utf8JsonWriter(response.Body);
            json.WriteStartObject();
            json.WriteString("object", "list");
            json.WriteStartArray("data");
            foreach (var m in generator.Models) WriteModel(json, m);
            json.WriteEndArray();
            json.WriteEndObject();
        }

        public async Task Model(HttpContext context, string id)
        {
            var model = generator.Models.FirstOrDefault(m => string.Equals(m.Name, id, StringComparison.OrdinalIgnoreCase));
            if (model is null)
            {
                await OpenAiErrors.WriteAsync(context, new ServiceException(ErrorKind.NotFound, $"model {ClientText.Quote(id)} is not served here", "model")).ConfigureAwait(false);
                return;
            }
            context.Response.ContentType = "application/json";
            await using var json = new Utf8JsonWriter(context.Response.Body);
            WriteModel(json, model);
        }

        /// <summary><c>{"object": "list", "data": [{"id", "object": "lora", "file_bytes", "loaded": [{"model", "format", ...}]}], "loaded_bytes", "cache_budget_bytes", "max_loras_per_request"}</c>.</summary>
        public async Task Loras(HttpContext context)
        {
            var listing = loras.List();
            context.Response.ContentType = "application/json";
            await using var json = new Utf8JsonWriter(context.Response.Body);
            json.WriteStartObject();
            json.WriteString("object", "list");
            json.WriteStartArray("data");
            foreach (var a in listing.Adapters)
            {
                json.WriteStartObject();
                json.WriteString("id", a.Name);
                json.WriteString("object", "lora");
                json.WriteNumber("file_bytes", a.FileBytes);
                json.WriteStartArray("loaded");
                foreach (var l in a.Loaded)
                {
                    json.WriteStartObject();
                    json.WriteString("model", l.Model);
                    json.WriteString("format", l.Format);
                    json.WriteNumber("modules", l.Modules);
                    json.WriteStartArray("ranks");
                    foreach (var r in l.Ranks) json.WriteNumberValue(r);
                    json.WriteEndArray();
                    json.WriteStartArray("alphas");
                    foreach (var al in l.Alphas) json.WriteNumberValue(al);
                    json.WriteEndArray();
                    json.WriteNumber("targets", l.Targets);
                    json.WriteNumber("bytes", l.Bytes);
                    json.WriteString("summary", l.Summary);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteNumber("loaded_bytes", listing.LoadedBytes);
            json.WriteNumber("cache_budget_bytes", listing.BudgetBytes);
            json.WriteNumber("max_loras_per_request", listing.MaxPerRequest);
            json.WriteEndObject();
        }

        static void WriteModel(Utf8JsonWriter json, ModelDescriptor m)
        {
            json.WriteStartObject();
            json.WriteString("id", m.Name);
            json.WriteString("object", "model");
            json.WriteNumber("created", m.Created.ToUnixTimeSeconds());
            json.WriteString("owned_by", "inference-server");
            json.WriteString("family", m.Family);
            json.WriteNumber("default_steps", m.DefaultSteps);
            json.WriteNumber("max_references", m.MaxReferences);
            json.WriteString("dtype", m.LoadedDType);
            json.WriteString("device", m.Device);
            json.WriteBoolean("default", m.IsDefault);
            json.WriteBoolean("ready", m.Ready);
            json.WriteNumber("max_loras", m.MaxLoras);
            json.WriteStartArray("merged_loras");
            foreach (var merged in m.MergedLoras) json.WriteStringValue(merged);
            json.WriteEndArray();
            json.WriteEndObject();
        }
    }

    static string FormatName(ImageFormat format) => format.ToString().ToLowerInvariant();
}
