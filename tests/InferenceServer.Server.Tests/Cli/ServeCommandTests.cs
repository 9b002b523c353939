namespace InferenceServer.Tests.Cli;

/// <summary>`serve` as a supervisor sees it.</summary>
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
}
