using InferenceServer.Server.Hosting;
using Microsoft.Extensions.Options;

namespace InferenceServer.Server.Jobs;

/// <summary>
/// This process's replica id, on the jobs it claims: <c>--replica-id</c>, or the host name and a short random suffix (two
/// processes on one host, or a restarted one, never share an id, so a dead process's leases are never mistaken for live ones).
/// </summary>
public sealed class ReplicaIdentity(IOptions<ServerOptions> options)
{
    public string Id { get; } = string.IsNullOrWhiteSpace(options.Value.Jobs.ReplicaId)
        ? $"{Environment.MachineName}-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(3))}"
        : options.Value.Jobs.ReplicaId.Trim();
}
