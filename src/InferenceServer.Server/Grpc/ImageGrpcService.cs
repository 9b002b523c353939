using System.Threading.Channels;
using Google.Protobuf;
using Grpc.Core;
using InferenceServer.Client.V1;
using InferenceServer.Pipeline.Generation;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Lora;
using Microsoft.Extensions.Options;
using JobEvent = InferenceServer.Server.Engine.JobEvent;
using JobResult = InferenceServer.Server.Engine.JobResult;

namespace InferenceServer.Server.Grpc;

/// <summary>
/// inference.v1.ImageService: maps messages to <see cref="ImageJobRequest"/> and back, and calls <see cref="IImageGenerator"/>.
/// Validation is the scheduler's; errors are <see cref="ServiceException"/>s that <see cref="GrpcErrorInterceptor"/> answers.
/// The call's deadline becomes the job's timeout and the call's token (client cancel or disconnect) the job's token.
/// </summary>
public sealed class ImageGrpcService(IImageGenerator generator, LoraLibrary loras, IOptions<ServerOptions> options) : ImageService.ImageServiceBase
{
    /// <summary>Key of the request id in <see cref="ServerCallContext.UserState"/>, for the interceptor's logs and errors.</summary>
    internal const string RequestIdKey = "request-id";

    public override async Task<GenerateResponse> Generate(GenerateRequest request, ServerCallContext context)
    {
        var job = ToJob(request, context);
        var result = await Run(job, request, null, context.CancellationToken);
        return ToResponse(result);
    }

    public override async Task GenerateStream(GenerateRequest request, IServerStreamWriter<GenerateEvent> responseStream, ServerCallContext context)
    {
        var job = ToJob(request, context);
        // onEvent runs on the engine thread: it only posts to the channel; this call's thread writes to the stream.
        var events = Channel.CreateUnbounded<GenerateEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var run = Run(job, request, e => events.Writer.TryWrite(ToEvent(e, job.RequestId)), context.CancellationToken);
        _ = run.ContinueWith(_ => events.Writer.TryComplete(), CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            await foreach (var e in events.Reader.ReadAllAsync(context.CancellationToken))
                await responseStream.WriteAsync(e, context.CancellationToken);
        }
        catch (Exception) when (context.CancellationToken.IsCancellationRequested)
        {
            // Client gone or deadline passed: the same token stops the job at its next step; its error is the answer.
        }
        var result = await run;
        await responseStream.WriteAsync(new GenerateEvent { RequestId = job.RequestId, Result = ToResponse(result) }, context.CancellationToken);
    }

    public override Task<ListModelsResponse> ListModels(ListModelsRequest request, ServerCallContext context)
    {
        var response = new ListModelsResponse();
        foreach (var m in generator.Models)
            response.Models.Add(new ModelInfo
            {
                Name = m.Name, Family = m.Family, DefaultSteps = (uint)m.DefaultSteps, MaxReferences = (uint)m.MaxReferences,
                LoadedDtype = m.LoadedDType, IsDefault = m.IsDefault, Device = m.Device, Ready = m.Ready,
                MaxLoras = (uint)m.MaxLoras, MergedLoras = { m.MergedLoras },
            });
        return Task.FromResult(response);
    }

    public override Task<ListLorasResponse> ListLoras(ListLorasRequest request, ServerCallContext context)
    {
        var listing = loras.List();
        var response = new ListLorasResponse
        {
            LoadedBytes = (ulong)listing.LoadedBytes, CacheBudgetBytes = (ulong)Math.Max(0, listing.BudgetBytes), MaxLorasPerRequest = (uint)listing.MaxPerRequest,
        };
        foreach (var a in listing.Adapters)
        {
            var info = new LoraInfo { Name = a.Name, FileBytes = (ulong)a.FileBytes };
            foreach (var l in a.Loaded)
                info.Loaded.Add(new LoadedLora
                {
                    Model = l.Model, Format = l.Format, Modules = (uint)l.Modules, Ranks = { l.Ranks.Select(r => (uint)r) }, Alphas = { l.Alphas },
                    Targets = (uint)l.Targets, Bytes = (ulong)l.Bytes, Summary = l.Summary,
                });
            response.Loras.Add(info);
        }
        return Task.FromResult(response);
    }

    async Task<JobResult> Run(ImageJobRequest job, GenerateRequest request, Action<JobEvent>? onEvent, CancellationToken cancellationToken)
    {
        try { return await generator.GenerateAsync(job, onEvent, cancellationToken); }
        catch (ServiceException e) when (e.Param is not null && GrpcField(e.Param, request) is var field && field != e.Param)
        {
            // "image 3: corrupt" -> "reference_images 3: corrupt"; "size 9999x64: ..." -> "width: size 9999x64: ...".
            string message = e.Param == "image" && e.Message.StartsWith("image", StringComparison.Ordinal)
                ? "reference_images" + e.Message["image".Length..]
                : $"{field}: {e.Message}";
            throw new ServiceException(e.Kind, message, field, e.RetryAfter, e);
        }
    }

    /// <summary>The message as the scheduler takes it: 0 / empty fields mean "the default" (n and seed have explicit presence).</summary>
    internal ImageJobRequest ToJob(GenerateRequest r, ServerCallContext context)
    {
        string id = string.IsNullOrWhiteSpace(r.RequestId) ? "grpc-" + Guid.NewGuid().ToString("N")[..16] : r.RequestId.Trim();
        if (id.Length > 128) throw ServiceException.Invalid("request_id", $"request_id: {id.Length} characters, at most 128 are allowed");
        // It goes into a response trailer and the log: a non-ASCII or control character used to fail the reply after the
        // whole job had run (trailer rejected) and to reach the log raw. Printable ASCII only, checked at admission.
        if (id.Any(c => c is <= ' ' or >= (char)127))
            throw ServiceException.Invalid("request_id", "request_id: printable ASCII characters only (no spaces, control or non-ASCII characters)");
        context.UserState[RequestIdKey] = id;
        context.ResponseTrailers.Add(RequestIdKey, id);
        TimeSpan? timeout = null;
        if (context.Deadline != DateTime.MaxValue)
            timeout = context.Deadline - DateTime.UtcNow is { Ticks: > 0 } left ? left : TimeSpan.Zero;
        return Map(r, id, timeout);
    }

    /// <summary>The generation fields of a message as the scheduler takes them (also a durable job's request, <see cref="JobGrpcService"/>).</summary>
    internal static ImageJobRequest Map(GenerateRequest r, string id, TimeSpan? timeout)
    {
        if ((r.Width == 0) != (r.Height == 0))
        {
            string missing = r.Width == 0 ? "width" : "height";
            throw ServiceException.Invalid(missing, $"{missing}: width and height are set together (or both left 0 for aspect_ratio / resolution)");
        }
        var format = r.OutputFormat switch
        {
            OutputFormat.Png => ImageFormat.Png,
            OutputFormat.Jpeg => ImageFormat.Jpeg,
            OutputFormat.Webp => ImageFormat.Webp,
            OutputFormat.Avif => ImageFormat.Avif,
            _ => throw ServiceException.Invalid("output_format", $"output_format: unknown value {(int)r.OutputFormat}"),
        };
        return new ImageJobRequest
        {
            Model = r.Model,
            RequestId = id,
            Timeout = timeout,
            PreviewEvery = (int)Math.Min(r.PreviewEvery, int.MaxValue),
            Origin = "grpc",
            Loras = r.Loras.Select(l => new RequestedLora(l.Name, l.HasScale ? l.Scale : 1.0)).ToList(),
            Generation = new GenerationRequest
            {
                Prompt = r.Prompt,
                References = r.ReferenceImages.Select(i => i.Data.ToByteArray()).ToList(),
                Size = new SizeRequest(r.Width > 0 ? $"{r.Width}x{r.Height}" : null, Blank(r.AspectRatio), Blank(r.Resolution)),
                Count = r.HasN ? (int)Math.Min(r.N, int.MaxValue) : 1,
                Seed = r.HasSeed && r.Seed != -1 ? r.Seed : null,                      // -1: random, as on HTTP
                Steps = r.Steps == 0 ? null : (int)Math.Min(r.Steps, int.MaxValue),
                Guidance = r.HasGuidance ? r.Guidance : null,
                Format = format,
                Quality = r.OutputCompression == 0 ? null : (int)Math.Min(r.OutputCompression, int.MaxValue),
            },
        };
    }

    static string? Blank(string s) => string.IsNullOrWhiteSpace(s) ? null : s;

    /// <summary>The scheduler names fields as the HTTP API does ("size", "image"); gRPC clients know width/height and reference_images.</summary>
    string GrpcField(string param, GenerateRequest r) => param switch
    {
        "image" => "reference_images",
        "size" when r.Width > 0 => OutOfRange(r.Width) || !OutOfRange(r.Height) ? "width" : "height",
        "size" => Blank(r.AspectRatio) is null ? "resolution" : "aspect_ratio",
        _ => param,
    };

    bool OutOfRange(uint side) => side < options.Value.Limits.MinSide || side > options.Value.Limits.MaxSide;

    static GenerateEvent ToEvent(JobEvent e, string requestId) => e switch
    {
        JobEvent.Queued q => new GenerateEvent { RequestId = requestId, Queued = new QueuedEvent { Position = (uint)q.Position } },
        JobEvent.Progress p => new GenerateEvent
        {
            RequestId = requestId,
            Progress = new ProgressEvent
            {
                Step = (uint)p.Step, TotalSteps = (uint)p.Steps,
                Preview = p.Preview is null ? ByteString.Empty : UnsafeByteOperations.UnsafeWrap(p.Preview),
            },
        },
        _ => throw new ArgumentOutOfRangeException(nameof(e), e, null),
    };

    static GenerateResponse ToResponse(JobResult r)
    {
        var g = r.Generation;
        var response = new GenerateResponse
        {
            RequestId = r.RequestId, Model = r.Model, Steps = (uint)g.Steps, BatchSize = (uint)r.BatchRequests,
            Timings = new Timings { TotalMs = r.TotalMilliseconds, QueueMs = r.QueueMilliseconds },
        };
        foreach (var i in g.Images)
            response.Images.Add(new Client.V1.GeneratedImage
            {
                // The pipeline's buffers are not touched again: wrap instead of copying (a 4K PNG is tens of MB).
                Data = UnsafeByteOperations.UnsafeWrap(i.Image.Bytes), MimeType = i.Image.MimeType,
                Width = (uint)i.Width, Height = (uint)i.Height, Seed = i.Seed,
            });
        response.Timings.StagesMs["queue"] = r.QueueMilliseconds;
        foreach (var stage in g.Timings.GroupBy(t => t.Name))
            response.Timings.StagesMs[stage.Key] = stage.Sum(t => t.Milliseconds);
        return response;
    }
}
