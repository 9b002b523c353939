using System.Net;
using System.Net.Sockets;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// Which addresses job webhooks may reach (SSRF guard): not loopback, private, carrier-grade NAT, link-local (the cloud
/// metadata service lives there), unique-local, unspecified or multicast addresses, unless an operator allows a host name
/// or a network (<c>--webhook-allow HOST|CIDR</c>). Checked on every address the name resolves to, at connect time, so a
/// name that resolves to a private address later (DNS rebinding) is still refused.
/// </summary>
public sealed class WebhookGuard
{
    static readonly IPNetwork[] Refused =
    [
        IPNetwork.Parse("0.0.0.0/8"), IPNetwork.Parse("10.0.0.0/8"), IPNetwork.Parse("100.64.0.0/10"), IPNetwork.Parse("127.0.0.0/8"),
        IPNetwork.Parse("169.254.0.0/16"), IPNetwork.Parse("172.16.0.0/12"), IPNetwork.Parse("192.168.0.0/16"), IPNetwork.Parse("224.0.0.0/3"),
        IPNetwork.Parse("::/128"), IPNetwork.Parse("::1/128"), IPNetwork.Parse("fc00::/7"), IPNetwork.Parse("fe80::/10"), IPNetwork.Parse("ff00::/8"),
    ];

    readonly HashSet<string> hosts = new(StringComparer.OrdinalIgnoreCase);
    readonly List<IPNetwork> networks = [];

    /// <param name="allow">Host names, addresses or CIDR networks that are reachable even when private.</param>
    public WebhookGuard(IEnumerable<string>? allow = null)
    {
        foreach (var a in allow ?? [])
        {
            string v = a.Trim();
            if (v.Length == 0) continue;
            if (IPNetwork.TryParse(v, out var net)) networks.Add(net);
            else if (IPAddress.TryParse(v, out var ip)) networks.Add(new IPNetwork(ip, ip.AddressFamily == AddressFamily.InterNetwork ? 32 : 128));
            else if (Uri.CheckHostName(v) == UriHostNameType.Dns) hosts.Add(v);
            else throw new ArgumentException($"--webhook-allow '{a}': expected a host name, an address or a CIDR network");
        }
    }

    /// <summary>Why <paramref name="url"/> cannot be a webhook target (not absolute http/https, user info), or null when it can be tried.</summary>
    public static string? CheckUrl(string url) =>
        // On Unix "/path" parses as an absolute file URI: it is still not a URL a client meant.
        !Uri.TryCreate(url, UriKind.Absolute, out var u) || (u.IsFile && !url.StartsWith("file:", StringComparison.OrdinalIgnoreCase)) ? "webhook_url: not an absolute URL"
        : u.Scheme is not ("http" or "https") ? $"webhook_url: scheme '{u.Scheme}' (http or https only)"
        : u.UserInfo.Length > 0 ? "webhook_url: credentials in the URL are not accepted (the request is signed)"
        : null;

    /// <summary>True when <paramref name="address"/> (resolved from <paramref name="host"/>) may be connected to.</summary>
    public bool Allows(string host, IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        if (hosts.Contains(host) || networks.Any(n => n.Contains(address))) return true;
        return !Refused.Any(n => n.Contains(address));
    }

    /// <summary>
    /// A handler that resolves the host itself and connects only to allowed addresses (the first that accepts), for the
    /// webhook client; a refused host fails the request with an <see cref="HttpRequestException"/> saying why.
    /// </summary>
    public SocketsHttpHandler Handler() => new()
    {
        AllowAutoRedirect = false,   // a redirect is a new target the guard would not see
        ConnectTimeout = TimeSpan.FromSeconds(10),
        ConnectCallback = async (context, ct) =>
        {
            string host = context.DnsEndPoint.Host;
            var addresses = IPAddress.TryParse(host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(host, ct).ConfigureAwait(false);
            var allowed = addresses.Where(a => Allows(host, a)).ToList();
            if (allowed.Count == 0)
                throw new HttpRequestException($"webhook host '{host}' resolves to {string.Join(", ", addresses.Select(a => a.ToString()))}: private, loopback, link-local or multicast addresses are refused (allow them with --webhook-allow)");
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(allowed.ToArray(), context.DnsEndPoint.Port, ct).ConfigureAwait(false);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        },
    };
}
