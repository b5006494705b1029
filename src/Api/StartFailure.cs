using System.Reflection;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Options;

namespace AsyncOrmApi;

/// <summary>What Program.cs prints, on one line, when the API cannot start.</summary>
public static class StartFailure
{
    /// <summary>
    /// Checks every typed setting now, before the host starts: the host would log its failure with a stack trace first
    /// ("Hosting failed to start"), and the endpoints their warnings.
    /// </summary>
    public static void ValidateSettings(this WebApplication app) => app.Services.GetRequiredService<IStartupValidator>().Validate();

    /// <summary>
    /// Whether Program.cs answers <paramref name="e"/> with its one line and exit code 1: only when the API is the process.
    /// Under WebApplicationFactory, Main runs inside the test host, which needs the exception itself (and stops Main with
    /// HostAbortedException once it has the host).
    /// </summary>
    public static bool EndsTheProcess(Exception e) =>
        e is not HostAbortedException && Assembly.GetEntryAssembly() == typeof(StartFailure).Assembly;

    /// <summary>
    /// The setting and its rule, from the exceptions that settings raise: a validation failure (ValidateOnStart), a value
    /// that does not convert ("Failed to convert configuration value at 'ChangeFeed:Window' ..."), a missing
    /// connection string, a content root that is not there. Their messages already name the setting; a stack trace would
    /// only hide it.
    /// </summary>
    public static string Describe(Exception e)
    {
        var message = e switch
        {
            OptionsValidationException invalid => string.Join("; ", invalid.Failures),
            Npgsql.PostgresException { SqlState: Npgsql.PostgresErrorCodes.InsufficientPrivilege } denied =>
                $"PostgreSQL refused the API's role: {denied.MessageText}. An administrator grants what the API needs once, "
                + "with script/sql/grant.sql (docs/deploy.md).",
            AggregateException { InnerExceptions: [var inner] } => Describe(inner),
            // The content root (--contentRoot, ASPNETCORE_CONTENTROOT) names no folder: the file provider's message is the
            // path alone.
            DirectoryNotFoundException missing when missing.TargetSite?.DeclaringType == typeof(PhysicalFileProvider) =>
                $"The content root {missing.Message} does not exist: start the API in its own folder, or name that folder "
                + "with --contentRoot or ASPNETCORE_CONTENTROOT (docs/deploy.md).",
            // Configuration binding: the outer message names the setting, the inner one why the value does not fit.
            InvalidOperationException { InnerException: { } inner } when e.Message.StartsWith("Failed to convert configuration value")
                => $"{e.Message} {inner.Message}",
            _ => e.Message,
        };
        return string.Join(' ', message.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries));
    }
}
