using System.Collections.Concurrent;
using Grpc.Core;
using Grpc.Net.Client;
using InferenceServer.Client.V1;
using InferenceServer.Reliability;
using InferenceServer.Tests.Serving;
using InferenceServer.Tests.Shared;
using Xunit.Abstractions;

namespace InferenceServer.Tests.Jobs;

/// <summary>
/// Durable jobs across real <c>inference-server serve</c> processes: three replicas sharing one PostgreSQL lose one to
/// SIGKILL and the database to a crash-restart while they run 200 jobs; a single SQLite server is killed with queued and
/// running jobs and restarted. Nothing is lost, nothing runs to two results, every image is what the request makes alone.
/// </summary>
[Collection(RunAlone.Name)]
public sealed class ReplicaFailoverTests(PostgresServer postgres, ITestOutputHelper output) : IClassFixture<PostgresServer>
{
    static readonly string ServerDll = Path.Combine(AppContext.BaseDirectory, "inference-server.dll");
    static readonly TimeSpan Ready = TimeSpan.FromMinutes(3);

    /// <summary>Short leases so a dead replica's jobs come back within seconds (the default is 30 s).</summary>
    static readonly Dictionary<string, string> FastLeases = new()
    {
        ["InferenceServer__Jobs__Lease"] = "00:00:03",
        ["InferenceServer__Jobs__PollInterval"] = "00:00:00.500",
    };

    static Task<ServerProcess> Replica(string jobs, string id, params string[] extra) =>
        ServerProcess.StartAsync(ServerDll, ServerProcess.ServeArgs(TinyModel.Folder, ["--jobs", jobs, "--replica-id", id, .. extra]), Ready, FastLeases);

    static SubmitJobRequest Frame(int i) => new()
    {
        // Ten prompts, 200 seeds: a render farm's shot (text encodings are cached, so the test spends its time on the jobs).
        Request = new GenerateRequest { Prompt = $"shot sh010, camera {i % 10}", Width = 64, Height = 64, Steps = 2, Seed = 1000 + i },
        Batch = "shot", IdempotencyKey = $"frame-{i}", Labels = { ["frame"] = $"{i:D4}" },
    };

    [Fact]
    public async Task Three_replicas_lose_one_to_SIGKILL_and_the_database_to_a_restart_and_all_200_jobs_succeed_once_with_the_images_run_alone_makes()
    {
        string db = postgres.CreateDatabase();
        var replicas = new List<ServerProcess>();
        try
        {
            foreach (var id in new[] { "r1", "r2", "r3" }) replicas.Add(await Replica(db, id));
            using var channel = GrpcChannel.ForAddress(replicas[0].GrpcAddress);
            var jobs = new JobService.JobServiceClient(channel);
            var submitted = new List<Job>();
            for (int start = 0; start < 200; start += 100)
            {
                var call = new SubmitJobsRequest();
                call.Jobs.AddRange(Enumerable.Range(start, 100).Select(Frame));
                submitted.AddRange((await jobs.SubmitJobsAsync(call)).Jobs.Select(j => j.Job));
            }
            Assert.Equal(200, submitted.Select(j => j.Id).Distinct().Count());
            var submittedAt = DateTime.UtcNow;

            // Kill r2 while it holds jobs: they go back to the queue when its lease expires and others run them.
            await Until(async () => (await jobs.ListJobsAsync(new ListJobsRequest { Status = JobState.Running, Limit = 1000 })).Jobs.Any(j => j.Replica == "r2"), "r2 never ran a job");
            var heldByR2 = (await jobs.ListJobsAsync(new ListJobsRequest { Status = JobState.Running, Limit = 1000 })).Jobs.Where(j => j.Replica == "r2").Select(j => j.Id).ToList();
            var killedAt = DateTime.UtcNow;
            output.WriteLine($"r2 ran a job {(killedAt - submittedAt).TotalSeconds:0.0} s after submission");
            await replicas[1].KillAsync();
            output.WriteLine($"killed r2 holding {heldByR2.Count} jobs");

            // The database crashes and comes back while r1 and r3 run: they reconnect and carry on.
            await Until(async () => (await jobs.GetBatchAsync(new GetBatchRequest { Batch = "shot" })).Succeeded >= 120, "work stalled before the database restart");
            output.WriteLine($"120 succeeded {(DateTime.UtcNow - killedAt).TotalSeconds:0.0} s after the kill");
            postgres.Restart();
            output.WriteLine($"postgres restarted {(DateTime.UtcNow - killedAt).TotalSeconds:0.0} s after the kill");

            Batch batch = null!;
            await Until(async () =>
            {
                try { batch = await jobs.GetBatchAsync(new GetBatchRequest { Batch = "shot" }); }
                catch (RpcException) { return false; }           // the database may still be coming back
                return batch.Succeeded + batch.Failed + batch.Cancelled == 200;
            }, "not every job finished", TimeSpan.FromMinutes(6));
            output.WriteLine($"200 finished {(DateTime.UtcNow - killedAt).TotalSeconds:0.0} s after the kill");
            foreach (var r in new[] { replicas[0], replicas[2] }) output.WriteLine(string.Join('\n', r.Log().Where(l => l.Contains("warn") || l.Contains("fail") || l.Contains("reachable"))));
            Assert.Equal((200u, 0u), (batch.Succeeded, batch.Failed));

            // Each job has one result; r2's jobs were run again by a live replica.
            var all = new List<Job>();
            string token = "";
            do
            {
                var page = await jobs.ListJobsAsync(new ListJobsRequest { Batch = "shot", Limit = 1000, PageToken = token });
                all.AddRange(page.Jobs);
                token = page.NextPageToken;
            } while (token != "");
            Assert.Equal(submitted.Select(j => j.Id), all.Select(j => j.Id));
            Assert.All(all, j => Assert.Single(j.Result.Images));
            foreach (var id in heldByR2)
            {
                var j = all.Single(x => x.Id == id);
                Assert.NotEqual("r2", j.Replica);
                Assert.True(j.Attempts >= 2, $"{id}: {j.Attempts} attempts");
            }
            output.WriteLine($"all done {(DateTime.UtcNow - killedAt).TotalSeconds:0.0} s after the kill; replicas: {string.Join(", ", all.GroupBy(j => j.Replica).Select(g => $"{g.Key}={g.Count()}"))}");

            // Seeded determinism: each image equals the same request run alone (a live call) on one replica.
            using var live = GrpcChannel.ForAddress(replicas[2].GrpcAddress);
            var images = new ImageService.ImageServiceClient(live);
            var readBack = new JobService.JobServiceClient(live);
            var mismatched = new ConcurrentBag<string>();
            await Parallel.ForEachAsync(Enumerable.Range(0, 200), new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (i, _) =>
            {
                var alone = await images.GenerateAsync(Frame(i).Request);
                var stored = await readBack.GetJobImagesAsync(new GetJobImagesRequest { Id = submitted[i].Id });
                if (!alone.Images[0].Data.Span.SequenceEqual(Assert.Single(stored.Images).Data.Span)) mismatched.Add(submitted[i].Id);
            });
            Assert.Empty(mismatched);
            // Submitting the same frames again (same idempotency keys) creates nothing.
            var again = await jobs.SubmitJobsAsync(new SubmitJobsRequest { Jobs = { Frame(0), Frame(199) } });
            Assert.All(again.Jobs, j => Assert.False(j.Created));
        }
        finally
        {
            foreach (var r in replicas) await r.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_SQLite_server_killed_with_queued_and_running_jobs_finishes_them_after_a_restart()
    {
        string dir = Directory.CreateTempSubdirectory("jobs-sqlite-restart-").FullName;
        string store = "sqlite:" + Path.Combine(dir, "jobs.db");
        try
        {
            List<string> ids;
            await using (var first = await Replica(store, "before", "--max-batch", "1"))
            {
                using var channel = GrpcChannel.ForAddress(first.GrpcAddress);
                var jobs = new JobService.JobServiceClient(channel);
                var call = new SubmitJobsRequest();
                call.Jobs.AddRange(Enumerable.Range(0, 8).Select(i => new SubmitJobRequest
                {
                    Request = new GenerateRequest { Prompt = $"slow {i}", Width = 64, Height = 64, Steps = 30, Seed = i }, Batch = "restart",
                }));
                ids = (await jobs.SubmitJobsAsync(call)).Jobs.Select(j => j.Job.Id).ToList();
                await Until(async () => (await jobs.GetBatchAsync(new GetBatchRequest { Batch = "restart" })).Running > 0, "nothing started");
                var counts = await jobs.GetBatchAsync(new GetBatchRequest { Batch = "restart" });
                Assert.True(counts.Queued > 0, "every job ran before the kill");
                await first.KillAsync();
            }
            await using var second = await Replica(store, "after");
            using var channel2 = GrpcChannel.ForAddress(second.GrpcAddress);
            var jobs2 = new JobService.JobServiceClient(channel2);
            foreach (var id in ids)
            {
                Job last = null!;
                using var watch = jobs2.WatchJob(new WatchJobRequest { Id = id }, deadline: DateTime.UtcNow.AddMinutes(3));
                await foreach (var e in watch.ResponseStream.ReadAllAsync()) last = e.Job;
                Assert.Equal(JobState.Succeeded, last.Status);
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>Re-evaluates <paramref name="condition"/> until it holds (polling the servers' own state), or fails after <paramref name="limit"/>.</summary>
    static async Task Until(Func<Task<bool>> condition, string what, TimeSpan? limit = null)
    {
        var until = DateTime.UtcNow + (limit ?? TimeSpan.FromMinutes(3));
        while (!await condition())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException(what);
            await Task.Delay(20);
        }
    }
}
