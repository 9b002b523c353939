using InferenceServer.Server.Cli;

namespace InferenceServer.Tests.Cli;

/// <summary>Runs an inference-server verb in-process, as the executable would, with its stderr captured.</summary>
internal static class Cli
{
    public static (int Rc, string Err) Invoke(params string[] args)
    {
        var (rc, _, err) = InvokeWithOutput(args);
        return (rc, err);
    }

    /// <summary>Also the verb's own stdout (lines it writes through the invocation's output, not Spectre's console).</summary>
    public static (int Rc, string Out, string Err) InvokeWithOutput(params string[] args)
    {
        var err = new StringWriter();
        var output = new StringWriter();
        int rc = CommandLine.Build().Parse(args).Invoke(new System.CommandLine.InvocationConfiguration { Error = err, Output = output });
        return (rc, output.ToString(), err.ToString());
    }
}
