using System.Net;
using System.Security.Cryptography;
using InferenceServer.Server.Jobs;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using StandardWebhooks;

namespace InferenceServer.Tests.Jobs;

/// <summary>Signed webhook deliveries to a real receiver on loopback, and the guard that keeps them off private addresses.</summary>
public sealed class WebhookTests
{
    internal static readonly string Secret = "whsec_" + Convert.ToBase64String(RandomNumberGenerator.GetBytes(24));

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData("10.1.2.3")]
    [InlineData("172.16.0.1")]
    [InlineData("192.168.1.1")]
    [InlineData("169.254.169.254")]      // cloud metadata
    [InlineData("100.64.0.1")]
    [InlineData("0.0.0.0")]
    [InlineData("224.0.0.1")]
    [InlineData("::1")]
    [InlineData("fe80::1")]
    [InlineData("fd00:ec2::254")]        // AWS metadata over IPv6
    [InlineData("::ffff:127.0.0.1")]     // loopback in IPv4-mapped form
    public void Private_loopback_link_local_and_metadata_addresses_are_refused(string address) =>
        Assert.False(new WebhookGuard().Allows("hooks.example", IPAddress.Parse(address)));

    [Theory]
    [InlineData("8.8.8.8")]
    [InlineData("1.1.1.1")]
    [InlineData("2606:4700::1111")]
    public void Public_addresses_are_allowed(string address) => Assert.True(new WebhookGuard().Allows("hooks.example", IPAddress.Parse(address)));

    [Fact]
    public void Operators_allow_hosts_addresses_and_networks()
    {
        var guard = new WebhookGuard(["127.0.0.1", "10.0.0.0/8", "hooks.internal"]);
        Assert.True(guard.Allows("x", IPAddress.Loopback));
        Assert.True(guard.Allows("x", IPAddress.Parse("10.9.8.7")));
        Assert.True(guard.Allows("hooks.internal", IPAddress.Parse("192.168.0.5")));
        Assert.False(guard.Allows("x", IPAddress.Parse("192.168.0.5")));
        Assert.Throws<ArgumentException>(() => new WebhookGuard(["not a host!"]));
    }

    [Theory]
    [InlineData("ftp://hooks.example/x", "scheme 'ftp'")]
    [InlineData("/relative", "not an absolute URL")]
    [InlineData("https://user:pw@hooks.example/x", "credentials")]
    public void Bad_urls_are_named(string url, string why) => Assert.Contains(why, WebhookGuard.CheckUrl(url));

    /// <summary>A receiver on a free loopback port that verifies each delivery with the Standard Webhooks library.</summary>
    internal sealed class Receiver : IAsyncDisposable
    {
        readonly WebApplication app;
        readonly SemaphoreSlim arrived = new(0);
        public List<(string Body, bool Verified)> Got { get; } = [];
        public int Status { get; set; } = 204;
        /// <summary>Answers for the next deliveries, in order; <see cref="Status"/> once they are used.</summary>
        public Queue<int> Next { get; } = new();

        /// <summary>Waits for the next delivery (the test's timeout bounds it).</summary>
        public Task NextDelivery() => arrived.WaitAsync();
        public string Url { get; }

        Receiver(WebApplication app, string url) { this.app = app; Url = url; }

        public static async Task<Receiver> StartAsync()
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            var app = builder.Build();
            Receiver? self = null;
            app.MapPost("/hook", async (HttpContext ctx) =>
            {
                string body = await new StreamReader(ctx.Request.Body).ReadToEndAsync();
                bool verified;
                try { new StandardWebhook(Secret).Verify(body, ctx.Request.Headers); verified = true; }
                catch (StandardWebhooks.Diagnostics.WebhookVerificationException) { verified = false; }
                int status;
                lock (self!.Got)
                {
                    self.Got.Add((body, verified));
                    status = self.Next.TryDequeue(out int next) ? next : self.Status;
                }
                self.arrived.Release();
                return Results.StatusCode(status);
            });
            await app.StartAsync();
            string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            return self = new Receiver(app, address + "/hook");
        }

        public async ValueTask DisposeAsync()
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_delivery_is_signed_so_the_receiver_verifies_it_and_a_5xx_is_reported_for_a_retry()
    {
        await using var receiver = await Receiver.StartAsync();
        using var sender = new WebhookSender(Secret, new WebhookGuard(["127.0.0.1"]));
        var ok = await sender.SendAsync(receiver.Url, "msg_1", "{\"id\":\"job_1\",\"status\":\"succeeded\"}");
        Assert.True(ok.Succeeded, ok.Error);
        var (body, verified) = Assert.Single(receiver.Got);
        Assert.True(verified);
        Assert.Equal("{\"id\":\"job_1\",\"status\":\"succeeded\"}", body);

        receiver.Status = 500;
        var failed = await sender.SendAsync(receiver.Url, "msg_2", "{}");
        Assert.Equal((500, false), (failed.Status, failed.Succeeded));
    }

    [Fact]
    public async Task Without_an_allowance_a_loopback_receiver_is_never_contacted()
    {
        await using var receiver = await Receiver.StartAsync();
        using var sender = new WebhookSender(Secret, new WebhookGuard());
        var refused = await sender.SendAsync(receiver.Url, "msg_1", "{}");
        Assert.Null(refused.Status);
        Assert.Contains("refused", refused.Error);
        Assert.Empty(receiver.Got);
        Assert.Throws<ArgumentException>(() => new WebhookSender("not-a-secret", new WebhookGuard()));
    }
}
