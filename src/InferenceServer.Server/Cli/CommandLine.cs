using System.CommandLine;

namespace InferenceServer.Server.Cli;

/// <summary>
/// The inference-server verbs. Each verb lives in its own file and is added here once it works; <see cref="CliErrors"/>
/// turns every verb's expected failures into one <c>error:</c> line and exit code 2.
/// </summary>
public static class CommandLine
{
    public static RootCommand Build()
    {
        var root = new RootCommand("InferenceServer: self-hosted image generation and editing (FLUX.2 klein) on TorchSharp.");
        foreach (var verb in Verbs())
        {
            CliErrors.Guard(verb);
            root.Subcommands.Add(verb);
        }
        return root;
    }

    static IEnumerable<Command> Verbs()
    {
        yield return InspectCommand.Create();
        yield return RandomCheckpointCommand.Create();
        yield return QuantizeCommand.Create();
        yield return RandomLoraCommand.Create();
        yield return GenerateCommand.Create("generate");
        yield return GenerateCommand.Create("edit");
        yield return ServeCommand.Create();
        yield return BenchCommand.Create();
    }
}
