using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Jobs;
using InferenceServer.Server.Observability;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Http;

/// <summary>
/// Durable jobs over HTTP (docs/jobs-api.md): <c>POST /v1/jobs</c> (the images API's generation/edit body, JSON or
/// multipart, plus job fields) answers 202 with the job (200 when an idempotency key returned an existing one);
/// <c>GET /v1/jobs/{id}</c>, <c>GET /v1/jobs/{id}/images/{index}</c>, <c>GET /v1/jobs/{id}/events</c> (Server-Sent
/// Events), <c>POST /v1/jobs/{id}/cancel</c>, <c>GET /v1/jobs</c> (paged) and <c>GET /v1/batches/{batch}</c>. Same API
/// keys and error shape as the images API; everything is <see cref="JobQueue"/>'s.
/// </summary>
public static class JobsHttpApi
{
    public static WebApplication MapJobsHttpApi(this WebApplication app)
    {
        var queue = app.Services.GetService<JobQueue>();
        var options = app.Services.GetRequiredService<IOptions<ServerOptions>>().Value;
        var h = new Handlers(queue, options, app.Services.GetRequiredService<ServerMetrics>(), app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("InferenceServer.Jobs.Http"));
        app.MapPost("/v1/jobs", h.Submit);
        app.MapGet("/v1/jobs", h.List);
        app.MapGet("/v1/jobs/{id}", (HttpContext c, string id) => h.Answer(c, () => h.Json(c, (q, owner) => q.Get(owner, id))));
        app.MapPost("/v1/jobs/{id}/cancel", (HttpContext c, string id) => h.Answer(c, () => h.Json(c, (q, owner) => q.Cancel(owner, id))));
        app.MapGet("/v1/jobs/{id}/images/{index}", (HttpContext c, string id, string index) => h.Answer(c, () => h.Image(c, id, index)));
        app.MapGet("/v1/jobs/{id}/events", (HttpContext c, string id) => h.Answer(c, () => h.Events(c, id)));
        app.MapGet("/v1/batches/{batch}", (HttpContext c, string batch) => h.Answer(c, () => h.Batch(c, batch)));
        return app;
    }

    sealed class Handlers(JobQueue? queue, ServerOptions options, ServerMetrics metrics, ILogger log)
    {
        JobQueue Queue => queue ?? throw new ServiceException(ErrorKind.NotFound, "durable jobs are off on this server (started with --jobs off)");

        string BaseUrl(HttpContext c) => OpenAiImagesApi.PublicBase(c, options.Files);

        /// <summary>Runs a handler; a <see cref="ServiceException"/> (or a body the reader refused) becomes the images API's error body.</summary>
        public async Task Answer(HttpContext c, Func<Task> handler)
        {
            var started = Stopwatch.StartNew();
            int status;
            try
            {
                await handler().ConfigureAwait(false);
                status = c.Response.StatusCode;
            }
            catch (Exception e) when (!c.Response.HasStarted)
            {
                var error = e as ServiceException ?? (e is BadHttpRequestException b
                    ? new ServiceException(b.StatusCode == StatusCodes.Status413PayloadTooLarge ? ErrorKind.TooLarge : ErrorKind.InvalidArgument, $"the request could not be read: {b.Message}", inner: b)
                    : c.RequestAborted.IsCancellationRequested ? new ServiceException(ErrorKind.Cancelled, "the request was cancelled by the client", inner: e)
                    : new ServiceException(ErrorKind.Internal, "internal error", inner: e));
                if (error.Kind == ErrorKind.Internal) log.LogError(e, "{Method} {Path} failed", c.Request.Method, c.Request.Path);
                await OpenAiErrors.WriteAsync(c, error).ConfigureAwait(false);
                status = OpenAiErrors.Status(error.Kind);
            }
            catch (Exception) when (c.RequestAborted.IsCancellationRequested) { status = 499; }   // an event stream's client left
            metrics.Answered("http", status.ToString(CultureInfo.InvariantCulture), status >= 400, started.Elapsed.TotalSeconds);
        }

        public Task Submit(HttpContext c) => Answer(c, async () =>
        {
            var q = Queue;
            var read = await ImageRequestReader.ReadAsync(c, options, OpenAiHttpMiddleware.RequestId(c), c.RequestAborted, jobFields: true).ConfigureAwait(false);
            var (view, created) = await Task.Run(() => (q.Submit(Owner(c), read.Job, read.JobFields!, out bool isNew), isNew)).ConfigureAwait(false);
            c.Response.StatusCode = created ? StatusCodes.Status202Accepted : StatusCodes.Status200OK;
            c.Response.Headers.Location = $"/v1/jobs/{view.Job.Id}";
            await WriteJob(c, view).ConfigureAwait(false);
        });

        /// <summary>Who asks: each API key sees only its own jobs.</summary>
        static string Owner(HttpContext c) => ApiKeys.Owner(c.Request.Headers.Authorization);

        public async Task Json(HttpContext c, Func<JobQueue, string, JobView> read)
        {
            var q = Queue;
            var view = await Task.Run(() => read(q, Owner(c))).ConfigureAwait(false);
            await WriteJob(c, view).ConfigureAwait(false);
        }

        async Task WriteJob(HttpContext c, JobView view)
        {
            c.Response.ContentType = "application/json";
            await using var w = new Utf8JsonWriter(c.Response.Body);
            JobJson.Write(w, view, BaseUrl(c), options.Jobs.Retention);
        }

        public async Task Image(HttpContext c, string id, string index)
        {
            var q = Queue;
            if (!int.TryParse(index, NumberStyles.None, CultureInfo.InvariantCulture, out int i))
                throw ServiceException.Invalid("index", $"index {ClientText.Quote(index)}: a number from 0 is expected");
            var image = await Task.Run(() => q.Image(Owner(c), id, i)).ConfigureAwait(false);
            c.Response.ContentType = image.MimeType;
            c.Response.ContentLength = image.Bytes.Length;
            c.Response.Headers["X-Seed"] = image.Seed.ToString(CultureInfo.InvariantCulture);
            await c.Response.Body.WriteAsync(image.Bytes, c.RequestAborted).ConfigureAwait(false);
        }

        public Task List(HttpContext c) => Answer(c, async () =>
        {
            var q = Queue;
            var query = c.Request.Query;
            int? limit = null;
            if (query["limit"].ToString() is { Length: > 0 } l)
                limit = int.TryParse(l, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n
                    : throw ServiceException.Invalid("limit", $"limit {ClientText.Quote(l)}: use 1 to {JobQueue.MaxListLimit}");
            var (jobs, next) = await Task.Run(() => q.List(Owner(c), query["status"], query["batch"], query["label"], limit, query["after"])).ConfigureAwait(false);
            c.Response.ContentType = "application/json";
            await using var w = new Utf8JsonWriter(c.Response.Body);
            w.WriteStartObject();
            w.WriteString("object", "list");
            w.WriteStartArray("data");
            foreach (var j in jobs) JobJson.Write(w, j, BaseUrl(c), options.Jobs.Retention);
            w.WriteEndArray();
            w.WriteBoolean("has_more", next is not null);
            if (next is not null) w.WriteString("next_after", next);
            w.WriteEndObject();
        });

        public async Task Batch(HttpContext c, string batch)
        {
            var q = Queue;
            var counts = await Task.Run(() => q.Batch(Owner(c), batch)).ConfigureAwait(false);
            c.Response.ContentType = "application/json";
            await using var w = new Utf8JsonWriter(c.Response.Body);
            w.WriteStartObject();
            w.WriteString("object", "batch");
            w.WriteString("batch", batch);
            w.WriteStartObject("counts");
            foreach (var (status, n) in counts) w.WriteNumber(JobQueue.Name(status), n);
            w.WriteEndObject();
            w.WriteNumber("total", counts.Values.Sum());
            w.WriteEndObject();
        }

        /// <summary>Server-Sent Events: <c>event: TYPE</c> and <c>data: JOB JSON</c> per change; the stream ends after a terminal state.</summary>
        public async Task Events(HttpContext c, string id)
        {
            var q = Queue;
            var ct = c.RequestAborted;
            await using var events = q.WatchAsync(Owner(c), id, ct).GetAsyncEnumerator(ct);
            bool any = await events.MoveNextAsync().ConfigureAwait(false);   // an unknown id throws here, before the stream starts
            c.Response.ContentType = "text/event-stream";
            c.Response.Headers.CacheControl = "no-cache";
            c.Response.Headers["X-Accel-Buffering"] = "no";
            while (any)
            {
                var (type, view) = events.Current;
                await c.Response.WriteAsync($"event: {type}\ndata: ", ct).ConfigureAwait(false);
                await c.Response.Body.WriteAsync(JobJson.ToBytes(view, BaseUrl(c), options.Jobs.Retention), ct).ConfigureAwait(false);
                await c.Response.WriteAsync("\n\n", ct).ConfigureAwait(false);
                await c.Response.Body.FlushAsync(ct).ConfigureAwait(false);
                any = await events.MoveNextAsync().ConfigureAwait(false);
            }
        }
    }
}
