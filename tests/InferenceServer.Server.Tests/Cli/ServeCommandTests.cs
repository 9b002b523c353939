namespace InferenceServer.Tests.Cli;

/// <summary>`serve` as a supervisor sees it. (In the Spectre collection: the NaN case writes its folder with random-checkpoint.)</summary>
[Collection(SpectreConsole.Name)]
public sealed class ServeCommandTests
{
    [Fact]
    public void A_model_that_fails_to_load_ends_serve_with_exit_code_3_and_the_reason()
    {
        // Regression (outside probe): serve logged `crit` and stayed up forever (healthz 200, every request 503, exit 0).
        string empty = Directory.CreateTempSubdirectory("serve-no-model-").FullName;
        try
        {
            var (rc, err) = Cli.Invoke("serve", "--model", empty, "--http-port", "0", "--grpc-port", "0", "--bind", "127.0.0.1");
            Assert.True(rc == 3, $"exit code {rc}: {err}");
            Assert.StartsWith("error: model load failed: ", err.Trim());
            Assert.Contains(Path.GetFileName(empty), err);
        }
        finally { Directory.Delete(empty, recursive: true); }
    }

    [Fact]
    public void A_model_with_NaN_weights_ends_serve_with_exit_code_3_naming_the_tensor()
    {
        // Regression (issue 14 item 14): NaN weights loaded without a word and every image came out black.
        using var tiny = new TinyModelFolder();
        string model = tiny.Copy(out string parent);
        try
        {
            TinyModelFolder.Poison(Path.Combine(model, "flux-2-tiny.safetensors"), "txt_in.weight", float.NaN);
            var (rc, err) = Cli.Invoke("serve", "--model", model, "--dtype", "fp32", "--http-port", "0", "--grpc-port", "0", "--bind", "127.0.0.1");
            Assert.True(rc == 3, $"exit code {rc}: {err}");
            Assert.StartsWith("error: model load failed: ", err.Trim());
            Assert.Contains("'txt_in.weight' holds non-finite values", err);
        }
        finally { Directory.Delete(parent, recursive: true); }
    }
}
