using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace AsyncOrmApi.Tests;

/// <summary>The scripts a user runs first (script/server, script/test's helpers), on a shared machine.</summary>
public sealed class ScriptTests(ApiFactory api) : ApiTest(api)
{
    [Fact]
    public async Task A_second_script_server_says_in_one_line_that_the_port_is_taken_and_touches_nothing()
    {
        using var first = new TcpListener(IPAddress.Loopback, 0);
        first.Start();
        var port = ((IPEndPoint)first.LocalEndpoint).Port;

        var (exit, output) = await RunAsync(Path.Combine(DeliveryTests.Root, "script", "server"), ("ASPNETCORE_URLS", $"http://127.0.0.1:{port}"), ("ConnectionStrings__Default", null));
        Assert.Equal(1, exit);
        // One line, before any PostgreSQL is started (or stopped) or anything is built.
        Assert.Equal([$"Port {port} is already taken (another script/server?): stop it, or set ASPNETCORE_URLS to another address."],
            output.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [LocalClusterFact]
    public async Task Pg_down_stops_only_a_cluster_that_its_pg_up_started()
    {
        // The tests' cluster runs (script/test or LocalPostgres started it): a pg_up that finds it leaves it to its owner.
        var (exit, output) = await RunAsync("bash", ["-c", ". script/lib/postgres.sh && pg_up test 15430 && echo started=$PG_STARTED && pg_down"
            + " && \"$(pg_bindir)/pg_isready\" -h 127.0.0.1 -p 15430"]);
        Assert.True(exit == 0, output);
        Assert.Contains("started=0", output);
        Assert.Equal(1L, await Api.ScalarAsync<long>("SELECT 1::bigint"));
    }

    [RootFact]
    public async Task Apt_install_waits_for_the_package_lock_another_apt_get_holds_and_says_so()
    {
        // Another apt-get, as apt itself locks: a POSIX lock on the lists' lock file, held for a few seconds.
        using var holder = Process.Start(new ProcessStartInfo("python3", ["-c",
            "import fcntl, sys, time; f = open('/var/lib/apt/lists/lock', 'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(8)"])
            { RedirectStandardOutput = true })!;
        Assert.Equal("held", await holder.StandardOutput.ReadLineAsync());

        var (exit, output) = await RunAsync("bash", ["-c", ". script/lib/postgres.sh && apt_install bash"]);
        Assert.True(exit == 0, output);
        Assert.Contains("Waiting for Debian's package lock", output);
        await holder.WaitForExitAsync();
    }

    static Task<(int Exit, string Output)> RunAsync(string file, params (string Name, string? Value)[] environment) =>
        RunAsync(file, [], environment);

    static async Task<(int Exit, string Output)> RunAsync(string file, string[] arguments, params (string Name, string? Value)[] environment)
    {
        var start = new ProcessStartInfo(file, arguments)
        {
            WorkingDirectory = DeliveryTests.Root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var (name, value) in environment)
            if (value is null)
                start.Environment.Remove(name);
            else
                start.Environment[name] = value;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        using var wait = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await process.WaitForExitAsync(wait.Token);
        return (process.ExitCode, await output + await errors);
    }
}

public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute() => Skip = Environment.UserName == "root" ? null : "only root may install Debian's packages";
}

public sealed class LocalClusterFactAttribute : FactAttribute
{
    public LocalClusterFactAttribute() => Skip = DotNet.Testcontainers.Configurations.TestcontainersSettings.OS.DockerEndpointAuthConfig is null
        ? null : "a Docker engine answers: the tests' PostgreSQL is a container, not a local cluster";
}
