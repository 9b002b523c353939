using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using Grpc.Net.Client;
using InferenceServer.Client.V1;

namespace InferenceServer.LoadGen;

/// <summary>
/// Durable-job figures against running servers (any store): submit throughput (SubmitJobs in chunks, and SubmitJob one
/// at a time at a concurrency), drain time and jobs/s until the submitted jobs finish, the server's claim time per batch
/// (from /metrics), and the end-to-end latency a job adds over the same live request (sequential, one at a time).
/// </summary>
public static class JobsBench
{
    public sealed record Figures(int Jobs, double SubmitJobsPerSecondChunked, double SubmitJobsPerSecondSingle, double DrainSeconds, double RunJobsPerSecond,
        double ClaimMsMean, Percentiles LiveMs, Percentiles JobMs);

    public static async Task<Figures> RunAsync(string target, string httpTarget, int jobs, int chunk, int concurrency, int latencySamples, int steps, string size)
    {
        var (w, h, _) = Workload.ParseSizes(size)[0];
        using var channel = GrpcChannel.ForAddress(target, new GrpcChannelOptions { MaxReceiveMessageSize = 256 << 20 });
        var client = new JobService.JobServiceClient(channel);
        var images = new ImageService.ImageServiceClient(channel);
        string batch = "bench-" + Guid.NewGuid().ToString("N")[..8];
        SubmitJobRequest Job(int i) => new() { Request = new GenerateRequest { Prompt = $"bench {i % 16}", Width = (uint)w, Height = (uint)h, Steps = (uint)steps, Seed = i }, Batch = batch };

        // Chunked: half the jobs through SubmitJobs calls.
        int half = jobs / 2;
        var sw = Stopwatch.StartNew();
        for (int start = 0; start < half; start += chunk)
        {
            var call = new SubmitJobsRequest();
            call.Jobs.AddRange(Enumerable.Range(start, Math.Min(chunk, half - start)).Select(Job));
            await client.SubmitJobsAsync(call);
        }
        double chunked = half / sw.Elapsed.TotalSeconds;
        Console.Error.WriteLine($"submitted {half} jobs in chunks of {chunk}: {chunked:F0} jobs/s");

        // One job per call, at a concurrency.
        sw.Restart();
        int next = half;
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async _ =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next) - 1) < jobs) await client.SubmitJobAsync(Job(i));
        }));
        double single = (jobs - half) / sw.Elapsed.TotalSeconds;
        Console.Error.WriteLine($"submitted {jobs - half} jobs one per call at concurrency {concurrency}: {single:F0} jobs/s");

        // Drain: until every job of the batch finished.
        var drain = Stopwatch.StartNew();
        var shown = Stopwatch.StartNew();
        Batch counts;
        do
        {
            await Task.Delay(500);
            counts = await client.GetBatchAsync(new GetBatchRequest { Batch = batch });
            // A line every 10 s into a file or pipe; the same line redrawn on a terminal.
            if (!Console.IsErrorRedirected) Console.Error.Write($"\r{counts.Succeeded + counts.Failed + counts.Cancelled}/{counts.Total} finished   ");
            else if (shown.Elapsed > TimeSpan.FromSeconds(10)) { Console.Error.WriteLine($"{counts.Succeeded + counts.Failed + counts.Cancelled}/{counts.Total} finished"); shown.Restart(); }
        } while (counts.Queued + counts.Running > 0);
        if (!Console.IsErrorRedirected) Console.Error.WriteLine();
        double drainSeconds = drain.Elapsed.TotalSeconds;
        double claimMs = await ClaimMeanMsAsync(httpTarget);

        // Latency: the same request live, then as a job (submit -> watch until succeeded -> fetch images), one at a time.
        var live = new List<double>();
        var job = new List<double>();
        for (int i = 0; i < latencySamples; i++)
        {
            var request = Job(jobs + i).Request;
            sw.Restart();
            await images.GenerateAsync(request);
            live.Add(sw.Elapsed.TotalMilliseconds);
            sw.Restart();
            var submitted = await client.SubmitJobAsync(new SubmitJobRequest { Request = request });
            using (var watch = client.WatchJob(new WatchJobRequest { Id = submitted.Job.Id }))
                await foreach (var _ in watch.ResponseStream.ReadAllAsync()) { }
            await client.GetJobImagesAsync(new GetJobImagesRequest { Id = submitted.Job.Id });
            job.Add(sw.Elapsed.TotalMilliseconds);
        }
        return new Figures(jobs, chunked, single, drainSeconds, jobs / drainSeconds, claimMs, Percentiles.Of(live), Percentiles.Of(job));
    }

    /// <summary>The server's mean claim transaction time: inference_job_claim_seconds sum / count on /metrics.</summary>
    static async Task<double> ClaimMeanMsAsync(string httpTarget)
    {
        using var http = new HttpClient();
        string text = await http.GetStringAsync(httpTarget.TrimEnd('/') + "/metrics");
        double Value(string name) => text.Split('\n').Where(l => l.StartsWith(name + " ", StringComparison.Ordinal))
            .Select(l => double.Parse(l[(name.Length + 1)..], CultureInfo.InvariantCulture)).FirstOrDefault();
        double count = Value("inference_job_claim_seconds_count");
        return count == 0 ? 0 : Value("inference_job_claim_seconds_sum") / count * 1000;
    }
}
