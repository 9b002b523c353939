using InferenceServer.Models.Weights;
using Spectre.Console;

namespace InferenceServer.Server.Cli;

/// <summary>
/// A model load on the command line: one progress bar per component (bytes read, speed, time) on the terminal's stderr, so
/// a minute-long cold load is never a silent wait; nothing is drawn when stderr is redirected (logs, pipes, tests).
/// </summary>
internal static class LoadProgressBar
{
    /// <summary>Runs <paramref name="load"/> with a new meter, drawing its progress; returns what it returns, and the meter.</summary>
    public static (T Result, LoadMeter Meter) Run<T>(Func<LoadMeter, T> load)
    {
        if (Console.IsErrorRedirected)
        {
            var quiet = new LoadMeter();
            return (load(quiet), quiet);
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        T result = default!;
        LoadMeter meter = null!;
        new Progress(console).AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>(StringComparer.Ordinal);
                meter = new LoadMeter(p =>
                {
                    ProgressTask? task;
                    lock (tasks)   // the reading threads report here; one bar per component
                        if (!tasks.TryGetValue(p.Component, out task)) tasks[p.Component] = task = ctx.AddTask(Markup.Escape(p.Component));
                    task.MaxValue = Math.Max(1, p.BytesTotal);
                    task.Value = p.BytesDone;
                });
                result = load(meter);
            });
        return (result, meter);
    }
}
