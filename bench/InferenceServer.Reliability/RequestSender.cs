using System.Diagnostics;
using System.Net.Http.Headers;
using Grpc.Core;
using Grpc.Net.Client;

namespace InferenceServer.Reliability;

/// <summary>
/// Sends <see cref="FuzzCase"/>s to one server exactly as built: HTTP bodies untouched (no client serializer), gRPC
/// messages as raw bytes through a pass-through marshaller, so malformed protobuf reaches the server's parser.
/// Every request has a time limit; past it the outcome is a hang.
/// </summary>
public sealed class RequestSender : IDisposable
{
    static readonly Marshaller<byte[]> Raw = Marshallers.Create(b => b, b => b);

    readonly HttpClient http;
    readonly GrpcChannel channel;
    readonly CallInvoker invoker;
    readonly string? apiKey;
    readonly TimeSpan limit;

    public RequestSender(Uri httpBase, string grpcAddress, string? apiKey, TimeSpan perRequestLimit)
    {
        http = new HttpClient(new SocketsHttpHandler { PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30) })
        { BaseAddress = httpBase, Timeout = Timeout.InfiniteTimeSpan, MaxResponseContentBufferSize = 1L << 30 };
        channel = GrpcChannel.ForAddress(grpcAddress, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 512 << 20, MaxSendMessageSize = 512 << 20,
            HttpHandler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true },
        });
        invoker = channel.CreateCallInvoker();
        this.apiKey = apiKey;
        limit = perRequestLimit;
    }

    public async Task<Outcome> SendAsync(FuzzCase c, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(limit);
        try
        {
            return c.Transport == Transport.Http ? await HttpAsync(c, sw, timeout.Token).ConfigureAwait(false)
                : await GrpcAsync(c, sw, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new Outcome("hang", null, null, sw.Elapsed.TotalMilliseconds, $"no answer within {limit.TotalSeconds:0} s");
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && timeout.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            return new Outcome("hang", null, null, sw.Elapsed.TotalMilliseconds, $"no answer within {limit.TotalSeconds:0} s");
        }
        catch (HttpRequestException e)
        {
            return new Outcome("transport", null, null, sw.Elapsed.TotalMilliseconds, e.GetBaseException().Message);
        }
    }

    async Task<Outcome> HttpAsync(FuzzCase c, Stopwatch sw, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(new HttpMethod(c.Method), c.Path.TrimStart('/'));
        if (c.Method is not "GET" and not "HEAD" || c.Body.Length > 0)
        {
            request.Content = new ByteArrayContent(c.Body);
            request.Content.Headers.ContentType = null;
            if (c.ContentType is not null) request.Content.Headers.TryAddWithoutValidation("Content-Type", c.ContentType);
        }
        if (c.AddKey && apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        foreach (var (k, v) in c.Headers)
            if (!request.Headers.TryAddWithoutValidation(k, v)) request.Content?.Headers.TryAddWithoutValidation(k, v);
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseContentRead, ct).ConfigureAwait(false);
        byte[] body = await response.Content.ReadAsByteArrayAsync(ct).ConfigureAwait(false);
        int status = (int)response.StatusCode;
        return new Outcome("http", status, null, sw.Elapsed.TotalMilliseconds,
            status >= 300 ? Shorten(System.Text.Encoding.UTF8.GetString(body, 0, Math.Min(body.Length, 1000))) : null, body.Length);
    }

    async Task<Outcome> GrpcAsync(FuzzCase c, Stopwatch sw, CancellationToken ct)
    {
        var headers = new Metadata();
        if (c.AddKey && apiKey is not null) headers.Add("authorization", $"Bearer {apiKey}");
        foreach (var (k, v) in c.Headers) headers.Add(k, v);
        var options = new CallOptions(headers, cancellationToken: ct);
        string[] parts = c.Path.Trim('/').Split('/', 2);
        string service = parts[0], name = parts.Length > 1 ? parts[1] : "";
        try
        {
            if (c.Streaming)
            {
                var method = new Method<byte[], byte[]>(MethodType.ServerStreaming, service, name, Raw, Raw);
                using var call = invoker.AsyncServerStreamingCall(method, null, options, c.Body);
                while (await call.ResponseStream.MoveNext(ct).ConfigureAwait(false)) { }
            }
            else
            {
                var method = new Method<byte[], byte[]>(MethodType.Unary, service, name, Raw, Raw);
                using var call = invoker.AsyncUnaryCall(method, null, options, c.Body);
                await call.ResponseAsync.ConfigureAwait(false);
            }
            return new Outcome("grpc", null, "OK", sw.Elapsed.TotalMilliseconds, null);
        }
        catch (RpcException e) when (!(e.StatusCode == StatusCode.Cancelled && ct.IsCancellationRequested))
        {
            return new Outcome("grpc", null, e.StatusCode.ToString(), sw.Elapsed.TotalMilliseconds, Shorten(e.Status.Detail));
        }
    }

    static string Shorten(string s) => s.Length <= 300 ? s : s[..300] + "...";

    public void Dispose()
    {
        http.Dispose();
        channel.Dispose();
    }
}
