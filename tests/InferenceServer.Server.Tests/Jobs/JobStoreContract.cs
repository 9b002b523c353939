using System.Text;
using InferenceServer.Server.Jobs;

namespace InferenceServer.Tests.Jobs;

/// <summary>The durable queue's rules, run against each store; time is moved by the test, never waited for.</summary>
public abstract class JobStoreContract : IDisposable
{
    protected sealed class ManualTime : TimeProvider
    {
        DateTimeOffset now = new(2026, 12, 7, 12, 0, 0, TimeSpan.Zero);
        public override DateTimeOffset GetUtcNow() => now;
        public void Advance(TimeSpan by) => now += by;
    }

    protected readonly ManualTime time = new();
    IJobStore? opened;
    IJobStore store => opened ??= Open();
    static readonly TimeSpan Lease = TimeSpan.FromSeconds(30);

    /// <summary>A store over this test's own storage; called again for a second handle (another process's view).</summary>
    protected abstract IJobStore Open();
    protected virtual void Cleanup() { }

    public void Dispose()
    {
        opened?.Dispose();
        Cleanup();
    }

    static JobSubmission Job(string prompt, string batchKey = "64x64/2", int priority = 0, string owner = "key-a") =>
        new(owner, Encoding.UTF8.GetBytes($"{{\"prompt\":\"{prompt}\"}}"), "tiny", batchKey) { Priority = priority };

    static JobResult Result(int images) => new(
        Enumerable.Range(0, images).Select(i => new JobImage(i, "image/png", [1, 2, (byte)i], 7 + i, 64, 64)).ToList(), Encoding.UTF8.GetBytes("{\"seed\":7}"));

    [Fact]
    public void A_job_goes_queued_running_succeeded_with_its_images_and_survives_reopening()
    {
        var (job, created) = store.Submit(Job("a fox") with { Labels = new Dictionary<string, string> { ["shot"] = "sh010" }, Batch = "b1", Steps = 2 });
        Assert.True(created);
        Assert.Equal(JobStatus.Queued, job.Status);
        var claimed = Assert.Single(store.Claim("r1", ["tiny"], 4, Lease));
        Assert.Equal((job.Id, JobStatus.Running, "r1", 1), (claimed.Id, claimed.Status, claimed.Replica, claimed.Attempts));
        Assert.Equal("{\"prompt\":\"a fox\"}", Encoding.UTF8.GetString(claimed.Submission.Request));   // a claim reads the request to run it
        Assert.Equal((0, 2), store.Renew(job.Id, "r1", Lease, 0, 0) is { } r0 ? (r0.Step, r0.Steps) : default);   // a heartbeat before the first step keeps the step count
        Assert.NotNull(store.Renew(job.Id, "r1", Lease, 1, 2));
        Assert.True(store.Complete(job.Id, "r1", Result(2)));
        using var reopened = Open();
        var done = reopened.Get(job.Id)!;
        Assert.Equal((JobStatus.Succeeded, 2, "sh010"), (done.Status, done.ImageCount, done.Submission.Labels["shot"]));
        Assert.Empty(done.Submission.Request);                              // reads leave the (possibly large) request out
        Assert.Equal([1, 2, 1], reopened.GetImage(job.Id, 1)!.Bytes);
        Assert.Null(reopened.GetImage(job.Id, 2));
        Assert.Equal(1, reopened.BatchCounts("b1")[JobStatus.Succeeded]);
    }

    [Fact]
    public void Claims_take_the_highest_priority_first_and_only_jobs_that_share_its_batch()
    {
        var low = store.Submit(Job("low", priority: 0)).Job;
        var other = store.Submit(Job("other size", batchKey: "128x128/2", priority: 5)).Job;
        var high = store.Submit(Job("high", priority: 9)).Job;
        var first = store.Claim("r1", ["tiny"], 4, Lease);
        Assert.Equal([high.Id, low.Id], first.Select(j => j.Id));           // high first, then the compatible low one; not the other size
        Assert.Equal(other.Id, Assert.Single(store.Claim("r2", ["tiny"], 4, Lease)).Id);
        Assert.Empty(store.Claim("r3", ["tiny"], 4, Lease));
        Assert.Empty(store.Claim("r3", ["another-model"], 4, Lease));
    }

    [Fact]
    public void An_expired_lease_returns_the_job_to_the_queue_and_the_old_replica_cannot_record_a_result()
    {
        var job = store.Submit(Job("x") with { MaxAttempts = 2 }).Job;
        store.Claim("dead", ["tiny"], 1, Lease);
        time.Advance(Lease + TimeSpan.FromSeconds(1));
        Assert.Equal(1, store.ReclaimExpired());
        Assert.Equal(JobStatus.Queued, store.Get(job.Id)!.Status);
        var again = Assert.Single(store.Claim("alive", ["tiny"], 1, Lease));
        Assert.Equal(2, again.Attempts);
        Assert.False(store.Complete(job.Id, "dead", Result(1)));           // fenced: the lease is another replica's now
        Assert.Null(store.Renew(job.Id, "dead", Lease, 1, 1));
        // The second (last) attempt's replica dies too: failed, saying why.
        time.Advance(Lease + TimeSpan.FromSeconds(1));
        store.ReclaimExpired();
        var failed = store.Get(job.Id)!;
        Assert.Equal((JobStatus.Failed, "lease_expired"), (failed.Status, failed.Error!.Code));
        Assert.Contains("2 of 2 attempts", failed.Error.Message);
    }

    [Fact]
    public void A_retryable_failure_queues_again_until_attempts_run_out_and_a_permanent_one_fails_at_once()
    {
        var job = store.Submit(Job("flaky") with { MaxAttempts = 2 }).Job;
        store.Claim("r1", ["tiny"], 1, Lease);
        Assert.True(store.Fail(job.Id, "r1", new JobError("internal", "boom"), retryable: true));
        Assert.Equal(JobStatus.Queued, store.Get(job.Id)!.Status);
        store.Claim("r1", ["tiny"], 1, Lease);
        Assert.True(store.Fail(job.Id, "r1", new JobError("internal", "boom again"), retryable: true));
        Assert.Equal((JobStatus.Failed, "boom again"), (store.Get(job.Id)!.Status, store.Get(job.Id)!.Error!.Message));

        var bad = store.Submit(Job("bad")).Job;
        store.Claim("r1", ["tiny"], 1, Lease);
        Assert.True(store.Fail(bad.Id, "r1", new JobError("invalid_argument", "size"), retryable: false));
        Assert.Equal((JobStatus.Failed, 1), (store.Get(bad.Id)!.Status, store.Get(bad.Id)!.Attempts));
    }

    [Fact]
    public void Idempotency_keys_return_the_first_job_per_owner_within_the_window()
    {
        var first = store.Submit(Job("a") with { IdempotencyKey = "k1" });
        var again = store.Submit(Job("a, resent") with { IdempotencyKey = "k1" });
        Assert.False(again.Created);
        Assert.Equal(first.Job.Id, again.Job.Id);
        Assert.True(store.Submit(Job("a", owner: "key-b") with { IdempotencyKey = "k1" }).Created);   // another owner's key space
        time.Advance(SqlJobStore.IdempotencyWindow + TimeSpan.FromMinutes(1));
        var later = store.Submit(Job("a") with { IdempotencyKey = "k1" });
        Assert.True(later.Created);
        Assert.NotEqual(first.Job.Id, later.Job.Id);
    }

    [Fact]
    public void Cancel_stops_a_queued_job_at_once_and_marks_a_running_one_for_its_replica()
    {
        var claimed = store.Submit(Job("older")).Job;
        var waiting = store.Submit(Job("newer", batchKey: "other")).Job;
        Assert.Equal(claimed.Id, Assert.Single(store.Claim("r1", ["tiny"], 1, Lease)).Id);   // equal priority: the older first
        Assert.Equal(JobStatus.Cancelled, store.Cancel(waiting.Id)!.Status);
        var marked = store.Cancel(claimed.Id)!;
        Assert.Equal((JobStatus.Running, true), (marked.Status, marked.CancelRequested));
        Assert.True(store.Renew(claimed.Id, "r1", Lease, 1, 2)!.CancelRequested);
        Assert.True(store.Cancelled(claimed.Id, "r1"));
        Assert.Equal(JobStatus.Cancelled, store.Get(claimed.Id)!.Status);
        Assert.Null(store.Cancel("job_unknown"));
    }

    [Fact]
    public void Lists_page_by_cursor_and_filter_by_status_batch_and_label_and_retention_deletes_finished_jobs()
    {
        var ids = Enumerable.Range(0, 5).Select(i => store.Submit(Job($"p{i}") with
        {
            Batch = i < 3 ? "shot" : null,
            Labels = new Dictionary<string, string> { ["frame"] = $"{i:D4}" },
        }).Job).ToList();
        var page1 = store.List(new JobQuery(Limit: 2));
        var page2 = store.List(new JobQuery(Limit: 2, After: page1[^1].Sequence));
        Assert.Equal(ids.Take(4).Select(j => j.Id), page1.Concat(page2).Select(j => j.Id));
        Assert.Equal(3, store.List(new JobQuery(Batch: "shot")).Count);
        Assert.Equal(ids[3].Id, Assert.Single(store.List(new JobQuery(Label: new("frame", "0003")))).Id);
        Assert.Equal(5, store.QueuedCount("key-a"));
        Assert.Equal(0, store.QueuedCount("key-b"));

        store.Cancel(ids[0].Id);
        Assert.Single(store.List(new JobQuery(Status: JobStatus.Cancelled)));
        time.Advance(TimeSpan.FromHours(25));
        Assert.Equal(1, store.Expire(time.GetUtcNow() - TimeSpan.FromHours(24), long.MaxValue, time.GetUtcNow() - TimeSpan.FromDays(7)));
        Assert.True(store.Get(ids[0].Id)!.Expired);                         // a tombstone: GET can say it expired
        Assert.Empty(store.List(new JobQuery(Status: JobStatus.Cancelled)));
        time.Advance(TimeSpan.FromDays(7));
        store.Expire(time.GetUtcNow() - TimeSpan.FromHours(24), long.MaxValue, time.GetUtcNow() - TimeSpan.FromDays(7));
        Assert.Null(store.Get(ids[0].Id));
        Assert.NotNull(store.Get(ids[1].Id));                               // still queued: never expired
    }

    [Fact]
    public async Task Concurrent_claimers_on_two_handles_of_one_file_never_take_a_job_twice()
    {
        var ids = Enumerable.Range(0, 60).Select(i => store.Submit(Job($"j{i}")).Job.Id).ToHashSet();
        using var second = Open();   // another process's view: only the database's locking between them
        var taken = new System.Collections.Concurrent.ConcurrentBag<string>();
        var claimers = Enumerable.Range(0, 4).Select(k => Task.Run(() =>
        {
            var s = k % 2 == 0 ? store : second;
            while (s.Claim($"r{k}", ["tiny"], 3, Lease) is { Count: > 0 } jobs)
                foreach (var j in jobs) taken.Add(j.Id);
        })).ToArray();
        await Task.WhenAll(claimers);
        Assert.Equal(ids.Count, taken.Count);
        Assert.True(ids.SetEquals(taken));
    }

    [Fact]
    public void SubmitMany_queues_a_call_in_one_transaction_and_a_released_job_keeps_its_attempt()
    {
        var jobs = store.SubmitMany([Job("a"), Job("b") with { IdempotencyKey = "k" }, Job("c")]);
        Assert.All(jobs, j => Assert.True(j.Created));
        Assert.False(store.SubmitMany([Job("b again") with { IdempotencyKey = "k" }])[0].Created);
        Assert.Equal(2, store.QueuePosition(jobs[2].Job));
        var claimed = store.Claim("r1", ["tiny"], 1, Lease)[0];
        Assert.True(store.Release(claimed.Id, "r1"));
        var back = store.Get(claimed.Id)!;
        Assert.Equal((JobStatus.Queued, 0, (string?)null), (back.Status, back.Attempts, back.Replica));
        Assert.False(store.Release(claimed.Id, "r1"));                      // not held any more
    }

    [Fact]
    public void A_webhook_is_armed_by_the_terminal_state_claimed_by_one_caller_and_retried_until_delivered_or_given_up()
    {
        var job = store.Submit(Job("hooked") with { WebhookUrl = "https://hooks.example/x" }).Job;
        Assert.Equal(WebhookState.Waiting, job.Webhook);
        Assert.Empty(store.ClaimWebhooks(10, TimeSpan.FromMinutes(1)));     // not finished yet
        store.Claim("r1", ["tiny"], 1, Lease);
        store.Complete(job.Id, "r1", Result(1));
        var due = Assert.Single(store.ClaimWebhooks(10, TimeSpan.FromMinutes(1)));
        Assert.Equal(job.Id, due.Id);
        Assert.Empty(store.ClaimWebhooks(10, TimeSpan.FromMinutes(1)));     // held by the first caller
        store.RecordDelivery(job.Id, new WebhookDelivery(time.GetUtcNow(), 500, null), TimeSpan.FromSeconds(10));
        Assert.Empty(store.ClaimWebhooks(10, TimeSpan.FromMinutes(1)));     // the retry is not due yet
        time.Advance(TimeSpan.FromSeconds(11));
        Assert.Single(store.ClaimWebhooks(10, TimeSpan.FromMinutes(1)));
        store.RecordDelivery(job.Id, new WebhookDelivery(time.GetUtcNow(), 204, null), null);
        var delivered = store.Get(job.Id)!;
        Assert.Equal(WebhookState.Delivered, delivered.Webhook);
        Assert.Equal([500, 204], delivered.WebhookDeliveries.Select(d => d.Status!.Value));

        var refused = store.Submit(Job("refused") with { WebhookUrl = "https://hooks.example/y" }).Job;
        store.Cancel(refused.Id);                                           // cancelled while queued: terminal too
        Assert.Single(store.ClaimWebhooks(10, TimeSpan.FromMinutes(1)));
        store.RecordDelivery(refused.Id, new WebhookDelivery(time.GetUtcNow(), null, "refused"), null);
        Assert.Equal(WebhookState.GaveUp, store.Get(refused.Id)!.Webhook);
    }

    [Fact]
    public void Past_the_result_byte_budget_the_oldest_results_expire_first()
    {
        var ids = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            var job = store.Submit(Job($"r{i}")).Job;
            store.Claim("r1", ["tiny"], 1, Lease);
            store.Complete(job.Id, "r1", Result(2));
            ids.Add(job.Id);
            time.Advance(TimeSpan.FromSeconds(1));
        }
        long each = store.Get(ids[0])!.ResultBytes;
        Assert.True(each > 0);
        var now = time.GetUtcNow();
        Assert.Equal(1, store.Expire(now - TimeSpan.FromHours(24), 2 * each, now - TimeSpan.FromDays(8)));
        Assert.True(store.Get(ids[0])!.Expired);
        Assert.Null(store.GetImage(ids[0], 0));
        Assert.False(store.Get(ids[1])!.Expired);
        Assert.NotNull(store.GetImage(ids[2], 1));
    }

    [Fact]
    public async Task The_per_owner_queued_limit_is_exact_across_handles_and_an_idempotent_repeat_passes_it()
    {
        store.SubmitMany([Job("kept") with { IdempotencyKey = "kept" }], maxQueuedPerOwner: 2);
        var over = Assert.Throws<QueueLimitException>(() => store.SubmitMany([Job("x"), Job("y")], maxQueuedPerOwner: 2));
        Assert.Equal((1, 2, 2), (over.Queued, over.Adding, over.Limit));
        Assert.Equal(1, store.QueuedCount("key-a"));                          // none of the refused call was queued
        store.Submit(Job("second"));
        Assert.False(store.SubmitMany([Job("kept") with { IdempotencyKey = "kept" }], maxQueuedPerOwner: 2)[0].Created);
        Assert.True(Assert.Single(store.SubmitMany([Job("other owner", owner: "key-b")], maxQueuedPerOwner: 2)).Created);

        // Two handles (two replicas) racing for the last slots of one owner: exactly the limit is queued.
        using var second = Open();
        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() =>
        {
            try { (i % 2 == 0 ? store : second).SubmitMany([Job($"race {i}", owner: "key-c")], maxQueuedPerOwner: 3); return true; }
            catch (QueueLimitException) { return false; }
        })));
        Assert.Equal(3, results.Count(ok => ok));
        Assert.Equal(3, store.QueuedCount("key-c"));
    }
}
