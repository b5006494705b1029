using System.Diagnostics;
using System.Net;

namespace AsyncOrmApi.Tests;

/// <summary>
/// The API as a process of its own, built like the tests (Release under script/test), in Production: for what only
/// a real process shows, such as what it writes to stdout.
/// </summary>
public sealed class ApiProcess : IAsyncDisposable
{
    readonly Process _process;
    readonly List<string> _output = [];

    readonly List<string> _errors = [];

    ApiProcess(Process process, Uri address)
    {
        _process = process;
        Address = address;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_output) _output.Add(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_errors) _errors.Add(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    public Uri Address { get; }

    public int Id => _process.Id;

    /// <summary>Kills it as a crash would (SIGKILL), and waits for it to be gone.</summary>
    public void Kill()
    {
        _process.Kill();
        _process.WaitForExit();
    }

    public IReadOnlyList<string> Output
    {
        get { lock (_output) return [.. _output]; }
    }

    public static async Task<ApiProcess> StartAsync(string connectionString, params (string Name, string Value)[] environment)
    {
        var address = new Uri($"http://127.0.0.1:{ApiFactory.FreePort()}");
        var start = StartInfo(address, [("ConnectionStrings__Default", connectionString), .. environment]);
        start.RedirectStandardError = true;
        var api = new ApiProcess(Process.Start(start)!, address);

        // Until it answers or exits: a busy machine may take long to start it, and a start that fails says why.
        using var probe = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(10) };
        var waited = Stopwatch.StartNew();
        while (waited.Elapsed < StartWait)
        {
            try
            {
                if ((await probe.GetAsync("/health/live")).StatusCode == HttpStatusCode.OK)
                    return api;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
            }
            if (api._process.HasExited)
                break;
            await Task.Delay(100);
        }
        var why = api._process.HasExited ? $"exited with code {api._process.ExitCode}" : $"did not answer /health/live within {StartWait.TotalSeconds:0} s";
        await api.DisposeAsync();
        List<string> said;
        lock (api._errors)
            said = [.. api.Output, .. api._errors];
        throw new InvalidOperationException(
            $"dotnet {start.Arguments} {why}; its output: {(said.Count == 0 ? "(none)" : string.Join('\n', said))}");
    }

    static readonly TimeSpan StartWait = TimeSpan.FromSeconds(180);

    /// <summary>Runs it until it exits by itself, as a start that fails does: its exit code, stdout and stderr.</summary>
    public static async Task<(int ExitCode, string Output, string Errors)> RunToExitAsync(params (string Name, string? Value)[] environment)
    {
        var start = StartInfo(new Uri($"http://127.0.0.1:{ApiFactory.FreePort()}"), environment);
        start.RedirectStandardError = true;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(wait.Token);
        return (process.ExitCode, await output, await errors);
    }

    static ProcessStartInfo StartInfo(Uri address, (string Name, string? Value)[] environment)
    {
        // tests/Api.Tests/bin/<Configuration>/<tfm>/ -> src/Api/bin/<Configuration>/<tfm>/AsyncOrmApi.dll
        var bin = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        var root = bin.Parent!.Parent!.Parent!.Parent!.Parent!.FullName;
        var dll = Path.Combine(root, "src", "Api", "bin", bin.Parent!.Name, bin.Name, "AsyncOrmApi.dll");
        var start = new ProcessStartInfo("dotnet", [dll, "--urls", address.ToString()])
        {
            RedirectStandardOutput = true,
            WorkingDirectory = Path.GetDirectoryName(dll)!,
            Environment =
            {
                ["ASPNETCORE_ENVIRONMENT"] = "Production",
                ["DOTNET_ENVIRONMENT"] = "Production",
            },
        };
        // Nothing from the test run's own environment: the setting under test is the only one.
        start.Environment.Remove("ConnectionStrings__Default");
        foreach (var (name, value) in environment)
        {
            if (value is null)
                start.Environment.Remove(name);
            else
                start.Environment[name] = value;
        }
        return start;
    }

    /// <summary>Stops it as an orchestrator does (SIGTERM), so that it flushes its logs.</summary>
    public async Task StopAsync()
    {
        if (_process.HasExited)
            return;
        using (var kill = Process.Start("kill", ["-TERM", _process.Id.ToString()]))
            await kill.WaitForExitAsync();
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await _process.WaitForExitAsync(wait.Token);
        _process.WaitForExit(); // drains the redirected output
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }
}
