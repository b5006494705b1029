using Microsoft.EntityFrameworkCore;

namespace AsyncOrmApi.Data;

public static class Database
{
    /// <summary>
    /// Registers <see cref="AppDb"/> on <c>ConnectionStrings:Default</c>. <c>Database:LogSql</c> is the
    /// seed's <c>echo=True</c>: every statement EF Core sends goes to the log, with its parameter values
    /// (on in Development).
    /// </summary>
    public static WebApplicationBuilder AddDatabase(this WebApplicationBuilder builder)
    {
        var logSql = builder.Configuration.GetValue<bool>("Database:LogSql");
        builder.Services.AddDbContextPool<AppDb>((services, options) => options
            .UseNpgsql(ConnectionString(services.GetRequiredService<IConfiguration>()), npgsql => npgsql
                // The same few statements run on every request: let Npgsql prepare them once per
                // connection instead of having PostgreSQL parse and plan them each time.
                .ConfigureDataSource(source => source.ConnectionStringBuilder.MaxAutoPrepare =
                    source.ConnectionStringBuilder.MaxAutoPrepare is 0 ? 20 : source.ConnectionStringBuilder.MaxAutoPrepare))
            .EnableSensitiveDataLogging(logSql));

        builder.Logging.AddFilter(DbLoggerCategory.Database.Command.Name, logSql ? LogLevel.Information : LogLevel.Warning);
        return builder;
    }

    /// <summary>Like the seed's create_all at start-up: a brand-new database answers with empty tables.</summary>
    public static async Task CreateMissingTablesAsync(this WebApplication app)
    {
        await using var scope = app.Services.CreateAsyncScope();
        await scope.ServiceProvider.GetRequiredService<AppDb>().CreateMissingTablesAsync(app.Lifetime.ApplicationStopping);
    }

    static string ConnectionString(IConfiguration config) =>
        config.GetConnectionString("Default") is { Length: > 0 } cs
            ? cs
            : throw new InvalidOperationException(
                "ConnectionStrings:Default is not set: set the environment variable ConnectionStrings__Default, "
                + "or start the API with script/server, which provisions a local PostgreSQL.");
}
