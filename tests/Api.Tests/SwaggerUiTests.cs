using System.Diagnostics;
using System.Text.Json;

namespace AsyncOrmApi.Tests;

/// <summary>
/// Swagger UI as a person uses it, in Debian's headless Chromium driven by playwright-core (tests/swagger-ui, which
/// script/test installs): each operation's Try it out, executed with what Swagger UI pre-fills, does what it says.
/// </summary>
public sealed class SwaggerUiTests(ApiFactory api) : ApiTest(api)
{
    [BrowserFact]
    public async Task Try_it_out_with_what_Swagger_UI_prefills_succeeds_for_every_operation_of_the_scenario()
    {
        await using var process = await ApiProcess.StartAsync(Api.ConnectionString, ("ASPNETCORE_ENVIRONMENT", "Development"), ("DOTNET_ENVIRONMENT", "Development"));
        (string Operation, string Status)[] expected =
        [
            ("POST /reset", "204"), ("POST /seed", "201"), ("GET /a", "200"), ("GET /a/first", "200"), ("GET /a/stream", "200"),
            ("PATCH /a/first", "200"),
            // The example's two lines, merged (the Prefer example): two A and two B inserted.
            ("POST /a", "200"),
        ];
        var (exit, output, errors) = await Browser.RunAsync(process.Address, expected.Select(e => e.Operation));
        Assert.True(exit == 0, $"try-it-out.mjs failed ({exit}): {errors}");
        var shown = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(expected.Select(e => $"{e.Operation} {e.Status}"),
            shown.Select(s => $"{s.GetProperty("operation").GetString()} {s.GetProperty("status").GetString()}"));

        // What the clicks did, in the database: the seed's rows, the first renamed, and the example's two A with two B.
        Assert.Equal("new data", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
        Assert.Equal(5L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
        Assert.Equal(7L, await Api.ScalarAsync<long>("SELECT count(*) FROM b"));
    }
}

/// <summary>Node and the script's playwright-core, with Debian's Chromium.</summary>
static class Browser
{
    public static string Folder => Path.Combine(DeliveryTests.Root, "tests", "swagger-ui");
    public static string Chromium => Environment.GetEnvironmentVariable("CHROMIUM") ?? "/usr/bin/chromium";

    public static string? Missing =>
        !File.Exists(Chromium) ? $"{Chromium} is missing: script/test installs Debian's chromium (as root)."
        : !Directory.Exists(Path.Combine(Folder, "node_modules", "playwright-core")) ? "tests/swagger-ui has no node_modules: script/test runs npm ci there."
        : null;

    public static async Task<(int Exit, string Output, string Errors)> RunAsync(Uri api, IEnumerable<string> operations)
    {
        var start = new ProcessStartInfo("node", ["try-it-out.mjs", api.ToString().TrimEnd('/'), .. operations])
        {
            WorkingDirectory = Folder,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var node = Process.Start(start)!;
        var output = node.StandardOutput.ReadToEndAsync();
        var errors = node.StandardError.ReadToEndAsync();
        using var wait = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await node.WaitForExitAsync(wait.Token);
        return (node.ExitCode, await output, await errors);
    }
}

public sealed class BrowserFactAttribute : FactAttribute
{
    public BrowserFactAttribute() => Skip = Browser.Missing;
}
