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

    [Theory]
    [InlineData("--jobs", "nonsense", "error: --jobs nonsense: use sqlite:PATH")]
    [InlineData("--jobs", "postgres://nobody@127.0.0.1:1/jobs", "error: job store (postgres://nobody@127.0.0.1:1/jobs): ")]
    [InlineData("--webhook-secret", "not-whsec", "error: webhooks: the webhook secret must start with 'whsec_'")]
    [InlineData("--webhook-allow", "not a host!", "error: webhooks: --webhook-allow 'not a host!'")]
    public void A_job_store_or_webhook_setting_it_cannot_use_ends_serve_at_once_with_exit_code_2(string flag, string value, string error)
    {
        string dir = Directory.CreateTempSubdirectory("serve-jobs-").FullName;
        try
        {
            var (rc, err) = Cli.Invoke("serve", flag, value, "--data-dir", dir, "--http-port", "0", "--grpc-port", "0", "--bind", "127.0.0.1");
            Assert.True(rc == 2, $"exit code {rc}: {err}");
            Assert.StartsWith(error, err.Trim());
            Assert.Single(err.Trim().Split('\n'));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
