using System.CommandLine;
using InferenceServer.Server.Cli;

// `serve` leaves SIGTERM / Ctrl+C to the ASP.NET host (drain, then exit); the other verbs cancel their work on it.
var invocation = new InvocationConfiguration();
if (args.Length > 0 && args[0] == "serve") invocation.ProcessTerminationTimeout = null;
return await CommandLine.Build().Parse(args).InvokeAsync(invocation);
