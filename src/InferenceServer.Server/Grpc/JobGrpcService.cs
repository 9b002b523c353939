using Google.Protobuf;
using Grpc.Core;
using InferenceServer.Client.V1;
using InferenceServer.Server.Engine;
using InferenceServer.Server.Hosting;
using InferenceServer.Server.Jobs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Job = InferenceServer.Client.V1.Job;
using JobStatus = InferenceServer.Server.Jobs.JobStatus;

namespace InferenceServer.Server.Grpc;

/// <summary>
/// inference.v1.JobService: maps messages to <see cref="JobQueue"/> calls and back. The generation request is mapped by
/// <see cref="ImageGrpcService.Map"/> (the live path's own mapping), so a job accepts exactly what Generate accepts.
/// Errors are <see cref="ServiceException"/>s that <see cref="GrpcCallInterceptor"/> answers.
/// </summary>
public sealed class JobGrpcService(IServiceProvider services, IOptions<ServerOptions> options) : JobService.JobServiceBase
{
    JobQueue Queue => services.GetService<JobQueue>() ?? throw new ServiceException(ErrorKind.NotFound, "durable jobs are off on this server (started with --jobs off)");

    public override Task<SubmitJobResponse> SubmitJob(SubmitJobRequest request, ServerCallContext context)
    {
        var q = Queue;
        var job = q.Submit(Owner(context), ToRequest(request, context), Fields(request), out bool created);
        return Task.FromResult(new SubmitJobResponse { Job = ToMessage(job), Created = created });
    }

    public override Task<SubmitJobsResponse> SubmitJobs(SubmitJobsRequest request, ServerCallContext context)
    {
        var q = Queue;
        if (request.Jobs.Count > options.Value.Jobs.MaxJobsPerCall)   // before mapping thousands of requests
            throw ServiceException.Invalid("jobs", $"jobs: {request.Jobs.Count} jobs in one call, at most {options.Value.Jobs.MaxJobsPerCall} are allowed");
        var jobs = request.Jobs.Select((j, i) =>
        {
            try { return (ToRequest(j, context), Fields(j)); }
            catch (ServiceException e) { throw new ServiceException(e.Kind, $"jobs[{i}]: {e.Message}", e.Param, e.RetryAfter, e); }
        }).ToList();
        var response = new SubmitJobsResponse();
        foreach (var (job, created) in q.SubmitMany(Owner(context), jobs))
            response.Jobs.Add(new SubmitJobResponse { Job = ToMessage(job), Created = created });
        return Task.FromResult(response);
    }

    public override Task<Job> GetJob(GetJobRequest request, ServerCallContext context) => Task.FromResult(ToMessage(Queue.Get(Owner(context), request.Id)));

    public override Task<Job> CancelJob(CancelJobRequest request, ServerCallContext context) => Task.FromResult(ToMessage(Queue.Cancel(Owner(context), request.Id)));

    public override async Task WatchJob(WatchJobRequest request, IServerStreamWriter<Client.V1.JobEvent> responseStream, ServerCallContext context)
    {
        await foreach (var (type, view) in Queue.WatchAsync(Owner(context), request.Id, context.CancellationToken))
            await responseStream.WriteAsync(new Client.V1.JobEvent { Type = type, Job = ToMessage(view) }, context.CancellationToken);
    }

    public override Task<ListJobsResponse> ListJobs(ListJobsRequest request, ServerCallContext context)
    {
        string? status = request.Status == JobState.Unspecified ? null
            : Enum.IsDefined(request.Status) ? request.Status.ToString() : throw ServiceException.Invalid("status", $"status: unknown value {(int)request.Status}");
        var (jobs, next) = Queue.List(Owner(context), status, request.Batch, request.Label, request.Limit == 0 ? null : (int)Math.Min(request.Limit, int.MaxValue), request.PageToken, "page_token");
        var response = new ListJobsResponse { NextPageToken = next ?? "" };
        response.Jobs.AddRange(jobs.Select(ToMessage));
        return Task.FromResult(response);
    }

    public override Task<GetJobImagesResponse> GetJobImages(GetJobImagesRequest request, ServerCallContext context)
    {
        var response = new GetJobImagesResponse();
        foreach (var image in Queue.Images(Owner(context), request.Id, request.Indexes.Select(i => (int)Math.Min(i, int.MaxValue)).ToList(), "indexes"))
            response.Images.Add(new GeneratedImage
            {
                Data = UnsafeByteOperations.UnsafeWrap(image.Bytes), MimeType = image.MimeType, Width = (uint)image.Width, Height = (uint)image.Height, Seed = image.Seed,
            });
        return Task.FromResult(response);
    }

    public override Task<Batch> GetBatch(GetBatchRequest request, ServerCallContext context)
    {
        var counts = Queue.Batch(Owner(context), request.Batch);
        return Task.FromResult(new Batch
        {
            Batch_ = request.Batch, Queued = (uint)counts[JobStatus.Queued], Running = (uint)counts[JobStatus.Running], Succeeded = (uint)counts[JobStatus.Succeeded],
            Failed = (uint)counts[JobStatus.Failed], Cancelled = (uint)counts[JobStatus.Cancelled], Total = (uint)counts.Values.Sum(),
        });
    }

    static string Owner(ServerCallContext context) => ApiKeys.Owner(context.RequestHeaders.GetValue("authorization"));

    static ImageJobRequest ToRequest(SubmitJobRequest r, ServerCallContext context)
    {
        if (r.Request is null) throw ServiceException.Invalid("request", "request: the generation request is required");
        return ImageGrpcService.Map(r.Request, "job", null);
    }

    static JobFields Fields(SubmitJobRequest r) => new()
    {
        Priority = r.Priority,
        IdempotencyKey = r.IdempotencyKey is { Length: > 0 } k ? k : null,
        WebhookUrl = r.WebhookUrl is { Length: > 0 } u ? u : null,
        Labels = new Dictionary<string, string>(r.Labels),
        Batch = r.Batch is { Length: > 0 } b ? b : null,
        MaxAttempts = r.HasMaxAttempts ? (int)Math.Min(r.MaxAttempts, 1000) : null,
    };

    /// <summary>The job as a message: the same fields as the HTTP JSON (<see cref="JobJson"/>).</summary>
    public Job ToMessage(JobView view)
    {
        var j = view.Job;
        var s = j.Submission;
        long Ms(DateTimeOffset? t) => t?.ToUnixTimeMilliseconds() ?? 0;
        var m = new Job
        {
            Id = j.Id, Status = (JobState)((int)j.Status + 1), QueuePosition = (uint)view.QueuePosition, Step = (uint)j.Step, TotalSteps = (uint)j.Steps,
            Replica = j.Replica ?? "", Attempts = (uint)j.Attempts, MaxAttempts = (uint)s.MaxAttempts, CreatedMs = Ms(j.Created), StartedMs = Ms(j.Started),
            FinishedMs = Ms(j.Finished), Model = s.Model, Priority = s.Priority, Batch = s.Batch ?? "", WebhookUrl = s.WebhookUrl ?? "",
            CancelRequested = j.CancelRequested && !j.IsTerminal, ExpiresMs = j.Finished is { } f ? Ms(f + options.Value.Jobs.Retention) : 0,
        };
        foreach (var (k, v) in s.Labels) m.Labels[k] = v;
        if (j.Status == JobStatus.Failed && j.Error is { } e) m.Error = new Client.V1.JobError { Code = e.Code, Message = e.Message };
        if (j.Status == JobStatus.Succeeded && JobResultDocument.Parse(j.Result) is { } r)
        {
            m.Result = new Client.V1.JobResult
            {
                Model = r.Model, Steps = (uint)r.Steps, BatchSize = (uint)r.BatchSize, Timings = new Timings { TotalMs = r.TotalMs, QueueMs = r.QueueMs },
            };
            foreach (var (stage, ms) in r.StagesMs) m.Result.Timings.StagesMs[stage] = ms;
            foreach (var i in r.Images)
                m.Result.Images.Add(new Client.V1.JobImageInfo
                {
                    Index = (uint)i.Index, MimeType = i.MimeType, Width = (uint)i.Width, Height = (uint)i.Height, Seed = i.Seed, Bytes = (ulong)i.Bytes,
                });
        }
        foreach (var d in j.WebhookDeliveries)
            m.WebhookDeliveries.Add(new Client.V1.WebhookDelivery { AtMs = d.At.ToUnixTimeMilliseconds(), Status = (uint)(d.Status ?? 0), Error = d.Error ?? "" });
        return m;
    }
}
