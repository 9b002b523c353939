using System.Text.Json;
using System.Text.Json.Serialization;

namespace InferenceServer.Models.Flux2.Autoencoder;

/// <summary>
/// Hyper-parameters of the FLUX.2 autoencoder: BFL <c>AutoEncoderParams</c> plus the constants its modules fix
/// (GroupNorm groups/eps, the latent BatchNorm eps/momentum, the 2x2 patch). JSON names are BFL's; loaded from a
/// component card such as <c>models/vae/flux2-vae.json</c>. The defaults are the real FLUX.2 VAE.
/// </summary>
public sealed record AutoEncoderConfig
{
    [JsonPropertyName("resolution")] public int Resolution { get; init; } = 256;
    [JsonPropertyName("in_channels")] public int InChannels { get; init; } = 3;
    [JsonPropertyName("ch")] public int Ch { get; init; } = 128;
    [JsonPropertyName("out_ch")] public int OutCh { get; init; } = 3;
    [JsonPropertyName("ch_mult")] public int[] ChMult { get; init; } = [1, 2, 4, 4];
    [JsonPropertyName("num_res_blocks")] public int NumResBlocks { get; init; } = 2;
    [JsonPropertyName("z_channels")] public int ZChannels { get; init; } = 32;
    [JsonPropertyName("groupnorm_groups")] public int GroupNormGroups { get; init; } = 32;
    [JsonPropertyName("groupnorm_eps")] public double GroupNormEps { get; init; } = 1e-6;
    [JsonPropertyName("bn_eps")] public double BatchNormEps { get; init; } = 1e-4;
    [JsonPropertyName("bn_momentum")] public double BatchNormMomentum { get; init; } = 0.1;
    /// <summary>Latent patch (rows, columns) packed into channels: 2x2 turns 32 latent channels into 128 token features.</summary>
    [JsonPropertyName("ps")] public int[] PatchSize { get; init; } = [2, 2];

    /// <summary>
    /// Whether the encoder ends with the 1x1 <c>quant_conv</c> (FLUX.2: yes). The FLUX.1 AE, which shares these blocks
    /// (see <c>ZImageAutoencoder</c>), has neither it nor <see cref="UsePostQuantConv"/>.
    /// </summary>
    [JsonPropertyName("use_quant_conv")] public bool UseQuantConv { get; init; } = true;

    /// <summary>Whether the decoder starts with the 1x1 <c>post_quant_conv</c> (FLUX.2: yes; FLUX.1: no).</summary>
    [JsonPropertyName("use_post_quant_conv")] public bool UsePostQuantConv { get; init; } = true;

    /// <summary>The real FLUX.2 VAE (BFL <c>AutoEncoderParams()</c> defaults, used by <c>util.load_ae</c>).</summary>
    public static AutoEncoderConfig Flux2 { get; } = new();

    /// <summary>Number of resolution levels (<c>len(ch_mult)</c>).</summary>
    [JsonIgnore] public int NumLevels => ChMult.Length;

    /// <summary>Pixels per latent pixel along each side: 2^(levels-1) (8 for FLUX.2).</summary>
    [JsonIgnore] public int DownFactor => 1 << (ChMult.Length - 1);

    /// <summary>Features per token after patchify: <c>z_channels * ps0 * ps1</c> (128 for FLUX.2).</summary>
    [JsonIgnore] public int TokenChannels => ZChannels * PatchSize[0] * PatchSize[1];

    /// <summary>Reads a card (extra keys such as <c>name</c> or <c>source</c> are ignored) and validates it.</summary>
    public static AutoEncoderConfig FromJson(string json)
    {
        var c = JsonSerializer.Deserialize<AutoEncoderConfig>(json) ?? throw new InvalidDataException("autoencoder config: JSON is null");
        c.Validate();
        return c;
    }

    /// <summary>Reads <paramref name="path"/> as a card (see <see cref="FromJson"/>).</summary>
    public static AutoEncoderConfig Load(string path)
    {
        try { return FromJson(File.ReadAllText(path)); }
        catch (Exception e) when (e is JsonException or InvalidDataException) { throw new InvalidDataException($"{path}: {e.Message}", e); }
    }

    /// <summary>Throws <see cref="InvalidDataException"/> when a value cannot describe a working autoencoder.</summary>
    public void Validate()
    {
        void Check(bool ok, string what) { if (!ok) throw new InvalidDataException($"autoencoder config: {what}"); }
        Check(InChannels > 0 && OutCh > 0 && Ch > 0 && ZChannels > 0 && NumResBlocks > 0, "channel counts and num_res_blocks must be positive");
        Check(ChMult is { Length: > 0 } && ChMult.All(m => m > 0), "ch_mult must be a non-empty list of positive integers");
        Check(GroupNormGroups > 0 && ChMult.All(m => Ch * m % GroupNormGroups == 0), $"every level width ch*ch_mult must be divisible by groupnorm_groups ({GroupNormGroups})");
        Check(PatchSize is [> 0, > 0], "ps must be two positive integers");
        Check(GroupNormEps > 0 && BatchNormEps > 0, "eps values must be positive");
    }
}
