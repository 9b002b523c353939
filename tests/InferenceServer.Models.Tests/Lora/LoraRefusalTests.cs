using InferenceServer.Models.Flux2;
using InferenceServer.Models.Lora;
using InferenceServer.Models.Weights;
using InferenceServer.Tests.Flux2;
using static TorchSharp.torch;

namespace InferenceServer.Tests.Lora;

/// <summary>Adapter files that do not fit the model are refused by <see cref="LoraAdapter.Load"/> with the file and the first bad key named.</summary>
public sealed class LoraRefusalTests : IDisposable
{
    readonly Flux2Case c = new("flux2-lora-bfl");
    readonly Flux2Transformer model;
    readonly LoraTargets targets;
    readonly string dir = Directory.CreateTempSubdirectory("lora-refusals-").FullName;

    public LoraRefusalTests()
    {
        model = c.LoadModel();
        targets = LoraTargets.Of(model, Flux2LoraNaming.Instance);
    }

    string Write(string name, params (string Key, Tensor Value)[] tensors)
    {
        string path = Path.Combine(dir, name + ".safetensors");
        SafetensorsWriter.Write(path, tensors);
        return path;
    }

    InvalidDataException Refused(string path, params string[] fragments)
    {
        var e = Assert.Throws<InvalidDataException>(() => LoraAdapter.Load(path, targets, ScalarType.Float32));
        Assert.Contains(Path.GetFileNameWithoutExtension(path), e.Message);
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        return e;
    }

    const string Qkv = "diffusion_model.double_blocks.0.img_attn.qkv"; // [192, 64] in the fixture model

    [Fact]
    public void A_file_that_is_not_safetensors()
    {
        string path = Path.Combine(dir, "notes.safetensors");
        File.WriteAllText(path, "this is not a safetensors file at all");
        Refused(path, "safetensors");
    }

    [Fact]
    public void A_key_no_layer_of_the_model_has() =>
        Refused(Write("unknown", ($"diffusion_model.double_blocks.9.img_attn.qkv.lora_A.weight", zeros(4, 64)), ($"diffusion_model.double_blocks.9.img_attn.qkv.lora_B.weight", zeros(192, 4))),
            "double_blocks.9.img_attn.qkv", "not an adaptable layer");

    [Fact]
    public void Text_encoder_keys_are_named_as_out_of_scope() =>
        Refused(Write("te", ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", zeros(4, 64)), ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", zeros(64, 4))),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1", "text-encoder");

    [Fact]
    public void Input_features_that_do_not_match_the_layer() =>
        Refused(Write("wide", ($"{Qkv}.lora_A.weight", zeros(4, 65)), ($"{Qkv}.lora_B.weight", zeros(192, 4))), $"{Qkv}.lora_A.weight", "65 input features", "takes 64");

    [Fact]
    public void Output_rows_that_do_not_match_the_layer() =>
        Refused(Write("rows", ($"{Qkv}.lora_A.weight", zeros(4, 64)), ($"{Qkv}.lora_B.weight", zeros(64, 4))), $"{Qkv}.lora_B.weight", "64 rows");

    [Fact]
    public void Up_and_down_of_different_rank() =>
        Refused(Write("rank", ($"{Qkv}.lora_A.weight", zeros(4, 64)), ($"{Qkv}.lora_B.weight", zeros(192, 3))), $"{Qkv}.lora_B.weight");

    [Fact]
    public void Non_finite_values()
    {
        var a = zeros(4, 64);
        a[1, 2] = tensor(float.NaN);
        Refused(Write("nan", ($"{Qkv}.lora_A.weight", a), ($"{Qkv}.lora_B.weight", zeros(192, 4))), $"{Qkv}.lora_A.weight", "non-finite");
    }

    [Fact]
    public void A_module_without_its_up_weight() =>
        Refused(Write("half", ($"{Qkv}.lora_A.weight", zeros(4, 64))), $"{Qkv}.lora_A.weight", "no up");

    [Fact]
    public void DoRA_and_other_adapter_kinds() =>
        Refused(Write("dora", ($"{Qkv}.lora_A.weight", zeros(4, 64)), ($"{Qkv}.lora_B.weight", zeros(192, 4)), ($"{Qkv}.dora_scale", ones(192, 1))), $"{Qkv}.dora_scale", "DoRA");

    [Fact]
    public void An_alpha_that_is_not_a_scalar() =>
        Refused(Write("alpha", ($"{Qkv}.lora_down.weight", zeros(4, 64)), ($"{Qkv}.lora_up.weight", zeros(192, 4)), ($"{Qkv}.alpha", ones(2))), $"{Qkv}.alpha", "scalar");

    [Fact]
    public void An_empty_file() => Refused(Write("empty"), "no tensors");

    public void Dispose()
    {
        model.Dispose();
        c.Dispose();
        Directory.Delete(dir, recursive: true);
    }
}
