namespace InferenceServer.Models.Runtime;

/// <summary>This process's resident memory as Linux reports it (/proc/self/status); 0 where there is no such file.</summary>
public static class ProcessMemory
{
    /// <summary>Resident set size now (VmRSS), in bytes.</summary>
    public static long Rss => ProcKilobytes("/proc/self/status", "VmRSS") * 1024;

    /// <summary>The highest resident set size since start or the last <see cref="ResetPeak"/> (VmHWM), in bytes.</summary>
    public static long Peak => ProcKilobytes("/proc/self/status", "VmHWM") * 1024;

    /// <summary>Starts <see cref="Peak"/> again from the current RSS (writes 5 to /proc/self/clear_refs); false where that is refused.</summary>
    public static bool ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    /// <summary>A "Field:  1234 kB" line of a /proc file (status, meminfo), in kB; 0 when the file or the field is missing.</summary>
    internal static long ProcKilobytes(string file, string field)
    {
        if (!File.Exists(file)) return 0;
        foreach (var line in File.ReadLines(file))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]);
        return 0;
    }
}
