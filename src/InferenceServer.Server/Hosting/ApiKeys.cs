using System.Security.Cryptography;
using System.Text;

namespace InferenceServer.Server.Hosting;

/// <summary>What an <c>authorization</c> value says about the caller.</summary>
public enum ApiKeyCheck { Accepted, Missing, Invalid }

/// <summary>
/// The accepted API keys and the one bearer check both front ends use (<c>Authorization: Bearer KEY</c> over HTTP, the
/// <c>authorization</c> metadata over gRPC): scheme case-insensitive, keys compared in constant time.
/// </summary>
public sealed class ApiKeys(IEnumerable<string> keys)
{
    const string Scheme = "Bearer ";
    readonly byte[][] keys = keys.Where(k => !string.IsNullOrEmpty(k)).Select(Encoding.UTF8.GetBytes).ToArray();

    /// <summary>False when no key is configured: every call is accepted.</summary>
    public bool Required => keys.Length > 0;

    public ApiKeyCheck Check(string? header)
    {
        if (!Required) return ApiKeyCheck.Accepted;
        if (header is null || !header.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase)) return ApiKeyCheck.Missing;
        var given = Encoding.UTF8.GetBytes(header[Scheme.Length..].Trim());
        bool match = false;
        foreach (var k in keys) match |= CryptographicOperations.FixedTimeEquals(k, given);
        return match ? ApiKeyCheck.Accepted : ApiKeyCheck.Invalid;
    }

    /// <summary>
    /// Who a caller is for per-key rules (durable jobs' idempotency keys and queued-job limits): a digest of the bearer key,
    /// never the key itself; "" without one.
    /// </summary>
    public static string Owner(string? header)
    {
        if (header is null || !header.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase)) return "";
        var digest = SHA256.HashData(Encoding.UTF8.GetBytes(header[Scheme.Length..].Trim()));
        return "key:" + Convert.ToHexStringLower(digest, 0, 12);
    }
}
