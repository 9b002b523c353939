using InferenceServer.Pipeline.Generation;
using InferenceServer.Server.Engine;

namespace InferenceServer.Tests.Serving;

/// <summary>The engine's batching rule alone: no server, no clock.</summary>
public class BatchPolicyTests
{
    static readonly object A = new(), B = new();
    static readonly BatchKey K256 = new(256, 256, 4, null, ""), K512 = new(512, 512, 4, null, "");

    [Fact]
    public void Takes_the_head_and_every_later_compatible_request_within_budget()
    {
        var policy = new BatchPolicy(MaxImages: 4, MaxTokens: 4 * 256);
        var queued = new List<BatchCandidate>
        {
            new(A, K256, 1, 256),   // head
            new(A, K512, 1, 1024),  // other key
            new(B, K256, 1, 256),   // other model
            new(A, K256, 2, 512),   // joins
            new(A, K256, 2, 512),   // would exceed 4 images
            new(A, K256, 1, 256),   // joins (skipping does not stop the scan)
        };
        Assert.Equal([0, 3, 5], policy.Select(queued));
    }

    [Fact]
    public void The_token_budget_binds_before_the_image_budget_and_the_head_always_runs()
    {
        var policy = new BatchPolicy(MaxImages: 8, MaxTokens: 1000);
        Assert.Equal([0, 1], policy.Select([new(A, K256, 1, 400), new(A, K256, 1, 400), new(A, K256, 1, 400)]));
        Assert.Equal([0], policy.Select([new(A, K512, 4, 4096), new(A, K512, 1, 1024)]));   // an over-budget head still runs alone
        Assert.Empty(policy.Select([]));
    }
}
