using System.Diagnostics;
using InferenceServer.Pipeline.Generation;

namespace InferenceServer.Server.Engine;

/// <summary>An admitted request: what it asked, the model and prepared request, its cancellation, its events and its completion.</summary>
public sealed class Job(ImageJobRequest request, ServedModel model, PreparedRequest prepared, CancellationToken token, Action<JobEvent>? onEvent, Stopwatch admitted)
{
    public ImageJobRequest Request { get; } = request;
    public ServedModel Model { get; } = model;
    public PreparedRequest Prepared { get; } = prepared;
    public CancellationToken Token { get; } = token;
    public Action<JobEvent>? OnEvent { get; } = onEvent;
    public Stopwatch Admitted { get; } = admitted;
    public LinkedListNode<Job>? Node { get; set; }
    public double QueueMilliseconds { get; set; }
    public TaskCompletionSource<JobResult> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}
