using InferenceServer.Server.Cli;

namespace InferenceServer.Tests.Cli;

/// <summary>Runs an inference-server verb in-process, as the executable would, with its stderr captured.</summary>
internal static class Cli
{
    public static (int Rc, string Err) Invoke(params string[] args)
    {
        var err = new StringWriter();
        int rc = CommandLine.Build().Parse(args).Invoke(new System.CommandLine.InvocationConfiguration { Error = err, Output = new StringWriter() });
        return (rc, err.ToString());
    }
}
