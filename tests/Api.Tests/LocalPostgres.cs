using System.Diagnostics;

namespace AsyncOrmApi.Tests;

/// <summary>
/// The local PostgreSQL clusters of the tests where no Docker engine answers: the ones script/test names in TEST_POSTGRES,
/// TEST_POSTGRES_REPLICA and TEST_POSTGRES_CTL, or else, under a plain <c>dotnet test</c>, the same clusters started here
/// through the same script (script/lib/postgres.sh's pg_test_clusters) and stopped when the run ends.
/// </summary>
static class LocalPostgres
{
    static readonly Lazy<Dictionary<string, string>> Started = new(Start);

    /// <summary>The setting <paramref name="name"/> (TEST_POSTGRES, TEST_POSTGRES_REPLICA or TEST_POSTGRES_CTL).</summary>
    public static string Setting(string name) =>
        Environment.GetEnvironmentVariable(name) is { Length: > 0 } value ? value
        // A server of one's own, named without the rest: starting clusters here would stop and start the wrong one.
        : Environment.GetEnvironmentVariable("TEST_POSTGRES") is { Length: > 0 }
            ? throw new InvalidOperationException($"TEST_POSTGRES is set and {name} is not: set both, as script/test does.")
            : Started.Value[name];

    static Dictionary<string, string> Start()
    {
        var (status, output, errors) = Bash("pg_test_clusters >&2 && env");
        if (status != 0)
            throw new InvalidOperationException(
                $"No Docker engine answers and TEST_POSTGRES is not set, and starting local clusters failed (exit {status}): "
                + $"{errors.Trim()}. script/test starts them too, installing PostgreSQL when run as root.");
        var settings = output.Split('\n').Select(line => line.Split('=', 2)).Where(p => p.Length == 2 && p[0].StartsWith("TEST_"))
            .ToDictionary(p => p[0], p => p[1]);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            Bash($"TEST_CLUSTER_DIRS='{settings["TEST_CLUSTER_DIRS"]}' pg_test_clusters_down");
        return settings;
    }

    static (int Status, string Output, string Errors) Bash(string command)
    {
        var start = new ProcessStartInfo("bash", ["-c", $". script/lib/postgres.sh && {command}"])
        {
            WorkingDirectory = DeliveryTests.Root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(start)!;
        var errors = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output, errors.Result);
    }
}
