namespace InferenceServer.Models.Runtime;

/// <summary>This process's resident memory as Linux reports it (/proc/self/status); 0 where there is no such file.</summary>
public static class ProcessMemory
{
    /// <summary>Resident set size now (VmRSS), in bytes.</summary>
    public static long Rss => StatusBytes("VmRSS");

    /// <summary>The highest resident set size since start or the last <see cref="ResetPeak"/> (VmHWM), in bytes.</summary>
    public static long Peak => StatusBytes("VmHWM");

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

    static long StatusBytes(string field)
    {
        if (!File.Exists("/proc/self/status")) return 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]) * 1024; // "VmRSS:\t  1234 kB"
        return 0;
    }
}
