using InferenceServer.Models.Flux2.Autoencoder;
using static TorchSharp.torch;

namespace InferenceServer.Models.Tests.Flux2.Autoencoder;

/// <summary>Model cards and seeded random-weight autoencoders for tests.</summary>
static class TinyVae
{
    /// <summary>The repository's models/vae folder.</summary>
    public static string CardDir
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "InferenceServer.sln"))) return Path.Combine(dir.FullName, "models", "vae");
            throw new DirectoryNotFoundException("models/vae: repository root (InferenceServer.sln) not found above the test binaries");
        }
    }

    public static AutoEncoderConfig Card(string name) => AutoEncoderConfig.Load(Path.Combine(CardDir, name + ".json"));

    /// <summary>
    /// A model with seeded random weights in the fixtures' style: default conv init, GroupNorm gamma 1+N(0, 0.25^2),
    /// every bias N(0, 0.1^2), BatchNorm mean N(0, 0.5^2) and var U(0.5, 2), so no parameter is a no-op.
    /// </summary>
    public static Flux2Autoencoder Create(AutoEncoderConfig config, long seed)
    {
        manual_seed(seed);
        var ae = new Flux2Autoencoder(config);
        using var _ = no_grad();
        foreach (var (name, p) in ae.named_parameters())
        {
            if (name.EndsWith(".bias", StringComparison.Ordinal)) p.copy_(randn(p.shape).mul_(0.1));
            else if (p.dim() == 1) p.copy_(randn(p.shape).mul_(0.25).add_(1));
        }
        var sd = ae.state_dict();
        sd["bn.running_mean"].copy_(randn(config.TokenChannels).mul_(0.5));
        sd["bn.running_var"].copy_(rand(config.TokenChannels).mul_(1.5).add_(0.5));
        return ae;
    }
}
