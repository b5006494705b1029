using System.Text.Json;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace AsyncOrmApi.Data;

public static class Database
{
    /// <summary>
    /// Registers <see cref="AppDb"/> on <c>ConnectionStrings:Default</c>. <c>Database:LogSql</c> is the
    /// seed's <c>echo=True</c>: every statement goes to the log, with its parameter values (on in Development).
    /// </summary>
    public static WebApplicationBuilder AddDatabase(this WebApplicationBuilder builder)
    {
        var logSql = builder.Configuration.GetValue<bool>("Database:LogSql");
        builder.Services.AddDbContextPool<AppDb>((services, options) => options
            .UseNpgsql(ConnectionString(services.GetRequiredService<IConfiguration>()), npgsql => npgsql
                // The echo is Npgsql's own command log: it has every statement, EF Core's and those the API sends on Npgsql
                // straight (the pages, the stream, COPY), which EF Core's log never sees. Without it the action captures
                // nothing, so that every host of a process shares EF Core's options (tests build many).
                .ConfigureDataSource(logSql
                    ? source => Tune(source, "asyncormapi").UseLoggerFactory(services.GetRequiredService<ILoggerFactory>()).EnableParameterLogging()
                    : source => Tune(source, "asyncormapi")))
            .EnableSensitiveDataLogging(logSql));

        // Reads on a standby when the connection string names several hosts.
        builder.Services.AddSingleton<Replicas>();

        builder.Logging.AddFilter(DbLoggerCategory.Database.Command.Name, LogLevel.Warning);
        if (logSql)
            builder.Logging.AddFilter("Npgsql.Command", LogLevel.Information);
        return builder;
    }

    /// <summary>The connection settings of every data source of the API; <paramref name="name"/> labels its metrics.</summary>
    public static NpgsqlDataSourceBuilder Tune(NpgsqlDataSourceBuilder source, string name)
    {
        // The same few statements run on every request: let Npgsql prepare them once per
        // connection instead of having PostgreSQL parse and plan them each time (unless the
        // connection string says otherwise).
        var settings = source.ConnectionStringBuilder;
        if (settings.MaxAutoPrepare == 0)
            settings.MaxAutoPrepare = 20;
        // A pooled connection is reset before its next use (RESET ALL, DISCARD TEMP, unlock all ...):
        // the costliest statement of a GET /a in the server's log, 0.2-0.5 ms against 0.05 for the
        // query. The API leaves no session state behind (no SET, LISTEN, temporary tables or session
        // locks; its advisory lock is per transaction), so there is nothing to reset (script/bench).
        settings.NoResetOnClose = true;
        // The seed's tables are public.a and public.b whatever the role's search_path: a role named like the API's own
        // schema (grant.sql's default, asyncormapi) would otherwise create them there, outside the feed's publication.
        settings.SearchPath = "public";
        if (IsReplicated(settings))
        {
            // Several hosts (a formation): writes go to whichever is the writable primary now, unless the string says
            // else. "primary" is not enough: a just-promoted pg_auto_failover node is out of recovery but still has
            // default_transaction_read_only on for a few seconds, and writes there failed with 25006 (ha-failover).
            settings.TargetSessionAttributes ??= "read-write";
            // Npgsql remembers each host's role for this long: after a failover the promoted standby would be
            // taken for a standby for up to the default 10 s more, and writes refused meanwhile.
            if (settings.HostRecheckSeconds == 10)
                settings.HostRecheckSeconds = 1;
        }
        // Metrics label the pool by its name, which is the connection string unless set.
        source.Name = name;
        // A span per command is what traces need; an event on each for its first response is not.
        source.ConfigureTracing(tracing => tracing.EnableFirstResponseEvent(false));
        return source;
    }

    /// <summary>Whether the connection string names several hosts (a formation: a primary and its standbys).</summary>
    public static bool IsReplicated(NpgsqlConnectionStringBuilder settings) => settings.Host?.Contains(',') == true;

    /// <summary>
    /// At start-up, like the seed's create_all: a brand-new database answers with empty tables. Then one
    /// small read, so that the read path (EF Core's context pool, Npgsql's reader and prepared statements) is built and
    /// JIT-ed before the server listens, not during the first request (about 150 ms of a cold stream's first byte on a
    /// 2-core machine), and the stream's query and serializer likewise, whatever the tables hold.
    /// </summary>
    public static async Task PrepareDatabaseAsync(this WebApplication app)
    {
        var ct = app.Lifetime.ApplicationStopping;
        await using var scope = app.Services.CreateAsyncScope();
        var db = scope.ServiceProvider.GetRequiredService<AppDb>();
        await db.CreateMissingTablesAsync(ct);
        await Queries.FirstAsync(db, ct);
        // The stream's query over no rows (an A's Bs are read whole, and the first A may have millions), and the
        // serializer on one A of the seed's shape.
        using var turn = new FetchTurn();
        await foreach (var _ in Queries.AllA(db, int.MaxValue, turn, ct: ct)) { }
        JsonSerializer.SerializeToUtf8Bytes(new ADto(1, "a1", [new BDto(1, 1, null)]), WireJson.Default.ADto);
    }

    /// <summary><c>ConnectionStrings:Default</c>, or an error that says how to set it.</summary>
    public static string ConnectionString(IConfiguration config) =>
        config.GetConnectionString("Default") is { Length: > 0 } cs
            ? cs
            : throw new InvalidOperationException(
                "ConnectionStrings:Default is not set: set the environment variable ConnectionStrings__Default, "
                + "or start the API with script/server, which provisions a local PostgreSQL.");
}
