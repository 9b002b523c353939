using System.CommandLine;
using System.CommandLine.Invocation;
using System.Text.Json;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Engine;

namespace InferenceServer.Server.Cli;

/// <summary>
/// The one place where a verb's expected failures become <c>error: MESSAGE</c> on stderr and exit code 2: bad arguments,
/// missing or damaged files (the loaders name the file and what is wrong), a full or read-only disk. Anything else is a
/// bug and keeps System.CommandLine's report with the stack trace (exit code 1). <c>serve</c>'s model-load failure
/// (exit code 3) is decided inside the verb and never reaches here.
/// </summary>
internal static class CliErrors
{
    /// <summary>The exit code of a failure the user can fix.</summary>
    public const int UserError = 2;

    /// <summary>True for the failures a user causes and can fix (input, files, disk), as opposed to bugs.</summary>
    public static bool IsExpected(Exception e) => e is ArgumentException or IOException or UnauthorizedAccessException or InvalidDataException
        or JsonException or ImageDecodeException or ServiceException;

    /// <summary>Wraps every verb's action (recursively) so the verbs themselves need no catch.</summary>
    public static void Guard(Command command)
    {
        command.Action = command.Action switch
        {
            SynchronousCommandLineAction s => new GuardedSync(s),
            AsynchronousCommandLineAction a => new GuardedAsync(a),
            var other => other,
        };
        foreach (var sub in command.Subcommands) Guard(sub);
    }

    /// <summary>Writes the one line; a multi-line message (an aggregate's) is kept on that line.</summary>
    static int Report(ParseResult r, Exception e)
    {
        r.InvocationConfiguration.Error.WriteLine($"error: {e.Message.ReplaceLineEndings(" ")}");
        return UserError;
    }

    sealed class GuardedSync(SynchronousCommandLineAction inner) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            try { return inner.Invoke(parseResult); }
            catch (Exception e) when (IsExpected(e)) { return Report(parseResult, e); }
        }
    }

    sealed class GuardedAsync(AsynchronousCommandLineAction inner) : AsynchronousCommandLineAction
    {
        public override async Task<int> InvokeAsync(ParseResult parseResult, CancellationToken cancellationToken = default)
        {
            try { return await inner.InvokeAsync(parseResult, cancellationToken); }
            catch (Exception e) when (IsExpected(e)) { return Report(parseResult, e); }
        }
    }
}
