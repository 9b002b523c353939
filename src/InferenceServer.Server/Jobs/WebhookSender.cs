using System.Net.Http.Headers;
using StandardWebhooks;

namespace InferenceServer.Server.Jobs;

/// <summary>What one webhook delivery attempt ended with: the HTTP status, or the error when no answer came.</summary>
public sealed record WebhookDelivery(DateTimeOffset At, int? Status, string? Error)
{
    public bool Succeeded => Status is >= 200 and < 300;
}

/// <summary>
/// Posts a job's JSON to its webhook, signed per the Standard Webhooks spec (<c>webhook-id</c>, <c>webhook-timestamp</c>,
/// <c>webhook-signature: v1,&lt;base64 HMAC-SHA256&gt;</c> with the server's <c>whsec_</c> secret), through the
/// <see cref="WebhookGuard"/>. One attempt per call: the caller records it and schedules the retries.
/// </summary>
public sealed class WebhookSender : IDisposable
{
    readonly StandardWebhook signer;
    readonly HttpClient http;
    readonly TimeProvider time;

    /// <param name="secret">The signing secret, <c>whsec_</c> followed by base64 key bytes.</param>
    public WebhookSender(string secret, WebhookGuard guard, TimeSpan? timeout = null, TimeProvider? time = null)
    {
        if (!secret.StartsWith("whsec_", StringComparison.Ordinal)) throw new ArgumentException("the webhook secret must start with 'whsec_' (base64 key bytes follow)", nameof(secret));
        signer = new StandardWebhook(secret);
        http = new HttpClient(guard.Handler()) { Timeout = timeout ?? TimeSpan.FromSeconds(15) };
        this.time = time ?? TimeProvider.System;
    }

    /// <summary>Sends <paramref name="json"/> to <paramref name="url"/> as message <paramref name="messageId"/>; never throws for the receiver's faults.</summary>
    public async Task<WebhookDelivery> SendAsync(string url, string messageId, string json, CancellationToken ct = default)
    {
        var now = time.GetUtcNow();
        if (WebhookGuard.CheckUrl(url) is { } bad) return new WebhookDelivery(now, null, bad);
        using var request = new HttpRequestMessage(HttpMethod.Post, url) { Content = new StringContent(json) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.Add("webhook-id", messageId);
        request.Headers.Add("webhook-timestamp", now.ToUnixTimeSeconds().ToString(System.Globalization.CultureInfo.InvariantCulture));
        request.Headers.Add("webhook-signature", signer.Sign(messageId, now, json));
        try
        {
            using var response = await http.SendAsync(request, ct).ConfigureAwait(false);
            return new WebhookDelivery(now, (int)response.StatusCode, null);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
        {
            return new WebhookDelivery(now, null, e.Message);
        }
    }

    public void Dispose() => http.Dispose();
}
