using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using AsyncOrmApi.Data;
using DotNet.Testcontainers.Configurations;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using Testcontainers.PostgreSql;

namespace AsyncOrmApi.Tests;

/// <summary>
/// The API on a real PostgreSQL, one database per test collection. Where a Docker engine answers, the
/// server is a Testcontainers PostgreSQL; otherwise it is the local cluster of <see cref="LocalPostgres"/>, named
/// by TEST_POSTGRES (a connection string with the right to create databases).
/// </summary>
public sealed class ApiFactory : WebApplicationFactory<Program>, IAsyncLifetime
{
    public const string Image = "postgres:15.14-alpine";

    PostgreSqlContainer? _container;

    /// <summary>Connection string of this collection's own database.</summary>
    public string ConnectionString { get; private set; } = "";

    /// <summary>Connection string of the server's maintenance database, for creating and dropping databases.</summary>
    public string ServerConnectionString { get; private set; } = "";

    public bool InContainer => _container is not null;

    public async Task InitializeAsync()
    {
        if (TestcontainersSettings.OS.DockerEndpointAuthConfig is not null)
        {
            // A fixed host port, so the server keeps its address across the outage tests' stop and start.
            _container = new PostgreSqlBuilder(Image).WithPortBinding(FreePort(), 5432)
                .WithCommand("-c", "wal_level=logical")       // GET /a/changes reads the WAL through logical replication
                .Build();
            await _container.StartAsync();
            ServerConnectionString = _container.GetConnectionString();
        }
        else
        {
            ServerConnectionString = LocalPostgres.Setting("TEST_POSTGRES");
        }
        ConnectionString = await CreateDatabaseAsync("asyncormapi_test_" + Guid.NewGuid().ToString("N")[..12]);

        // Real Kestrel on a free loopback port, not the in-memory TestServer: body size limits, aborted
        // responses and connection resets behave as they do in production.
        UseKestrel(0);
        StartServer();
        ClientOptions.BaseAddress = AddressOf(this);
    }

    /// <summary>
    /// This API with some settings changed. It serves in memory (TestServer) unless UseKestrel is called on it
    /// before its first client.
    /// </summary>
    public WebApplicationFactory<Program> With(params (string Key, string Value)[] settings) =>
        WithWebHostBuilder(b =>
        {
            foreach (var (key, value) in settings)
                b.UseSetting(key, value);
        });

    /// <summary>This API with some settings changed, served by real Kestrel on a free loopback port, started.</summary>
    public WebApplicationFactory<Program> OnKestrel(params (string Key, string Value)[] settings)
    {
        var app = With(settings);
        app.UseKestrel(0);
        app.StartServer();
        return app;
    }

    /// <summary>A client of a Kestrel-served factory whose connections come from <paramref name="localAddress"/> (any of 127.0.0.0/8).</summary>
    public static HttpClient ClientFrom(WebApplicationFactory<Program> app, string localAddress) => ClientFrom(AddressOf(app), localAddress);

    /// <summary>A client of <paramref name="address"/> (the API, or a proxy in front of it) whose connections come from <paramref name="localAddress"/>.</summary>
    public static HttpClient ClientFrom(Uri address, string localAddress) =>
        new(new SocketsHttpHandler
        {
            ConnectCallback = async (context, ct) =>
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
                socket.Bind(new IPEndPoint(IPAddress.Parse(localAddress), 0));
                await socket.ConnectAsync(context.DnsEndPoint, ct);
                return new NetworkStream(socket, ownsSocket: true);
            },
        })
        { BaseAddress = address };

    /// <summary>Where a factory started with UseKestrel listens.</summary>
    public static Uri AddressOf(WebApplicationFactory<Program> factory) =>
        new(factory.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First());

    async Task IAsyncLifetime.DisposeAsync()
    {
        await base.DisposeAsync();
        if (_container is not null)
            await _container.DisposeAsync();
        else
            await DropDatabaseAsync(ConnectionString);
    }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Development");
        builder.UseSetting("ConnectionStrings:Default", ConnectionString);
        // Every host in this process builds the same EF Core options unless a test says otherwise: EF Core builds an
        // internal service provider per option set, and warns (an error by default) past twenty.
        builder.UseSetting("Database:LogSql", "false");
        builder.UseSetting("Logging:LogLevel:Default", "Warning");
    }

    /// <summary>Stops the PostgreSQL server under the running API (fast shutdown: sessions are cut).</summary>
    public Task StopDatabaseAsync() => _container is not null ? _container.StopAsync() : PgCtlAsync("stop -m fast");

    public async Task StartDatabaseAsync()
    {
        await (_container is not null ? _container.StartAsync() : PgCtlAsync("start"));
        // The tests' own pooled connections (ScalarAsync and friends) did not survive the restart.
        NpgsqlConnection.ClearAllPools();
    }

    static async Task PgCtlAsync(string verb)
    {
        var ctl = LocalPostgres.Setting("TEST_POSTGRES_CTL");
        using var process = Process.Start(new ProcessStartInfo("bash", ["-c", $"{ctl} {verb}"]) { RedirectStandardOutput = true })!;
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"pg_ctl {verb} exited with {process.ExitCode}");
    }

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>A new empty database on the same server; returns its connection string.</summary>
    public async Task<string> CreateDatabaseAsync(string name)
    {
        await using (var server = new NpgsqlConnection(ServerConnectionString))
        {
            await server.OpenAsync();
            await new NpgsqlCommand($"CREATE DATABASE \"{name}\"", server).ExecuteNonQueryAsync();
        }
        return new NpgsqlConnectionStringBuilder(ServerConnectionString) { Database = name }.ConnectionString;
    }

    public async Task DropDatabaseAsync(string connectionString)
    {
        NpgsqlConnection.ClearAllPools();
        var name = new NpgsqlConnectionStringBuilder(connectionString).Database;
        await using var server = new NpgsqlConnection(ServerConnectionString);
        await server.OpenAsync();
        // A change feed's temporary slot goes with its replication connection, which a process killed a moment ago (or a
        // host still stopping) may not have closed yet: its walsender is ended, and the drop tried again.
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)", server).ExecuteNonQueryAsync();
                return;
            }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.ObjectInUse && attempt < 20)
            {
                await new NpgsqlCommand($"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{name}' "
                    + "AND active_pid IS NOT NULL", server).ExecuteNonQueryAsync();
                await Task.Delay(250);
            }
        }
    }

    /// <summary>Drops and creates the tables, as POST /reset does, but without going through HTTP.</summary>
    public async Task ResetAsync()
    {
        await using var scope = Services.CreateAsyncScope();
        await scope.ServiceProvider.GetRequiredService<AppDb>().ResetTablesAsync();
    }

    /// <summary>One value straight from the database, to check what the API left there.</summary>
    public async Task<T> ScalarAsync<T>(string sql)
    {
        await using var conn = new NpgsqlConnection(ConnectionString);
        await conn.OpenAsync();
        return (T)(await new NpgsqlCommand(sql, conn).ExecuteScalarAsync())!;
    }

    /// <summary>Transactions open on this collection's database now, but the caller's (an ingest's, say).</summary>
    /// <summary>
    /// A reader in the middle of its transaction (a stream, say) that has read <paramref name="table"/> and so holds its lock
    /// until <see cref="HeldTable.ReleaseAsync"/> or disposal.
    /// </summary>
    public async Task<HeldTable> HoldTableAsync(string table)
    {
        var connection = new NpgsqlConnection(ConnectionString);
        await connection.OpenAsync();
        var tx = await connection.BeginTransactionAsync();
        await new NpgsqlCommand($"SELECT count(*) FROM {table}", connection, tx).ExecuteScalarAsync();
        return new HeldTable(connection, tx);
    }

    public sealed class HeldTable(NpgsqlConnection connection, NpgsqlTransaction tx) : IAsyncDisposable
    {
        public Task ReleaseAsync() => tx.CommitAsync();

        public async ValueTask DisposeAsync()
        {
            await tx.DisposeAsync();
            await connection.DisposeAsync();
        }
    }

    public Task<long> OpenTransactionsAsync() => ScalarAsync<long>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND xact_start IS NOT NULL "
        + "AND backend_type = 'client backend' AND pid <> pg_backend_pid()");

    public async Task ExecuteAsync(string sql)
    {
        await using var conn = new NpgsqlConnection(ConnectionString);
        await conn.OpenAsync();
        await new NpgsqlCommand(sql, conn).ExecuteNonQueryAsync();
    }

    /// <summary>The tables' rows as text, to compare the database before and after a request.</summary>
    public Task<string> SnapshotAsync() => ScalarAsync<string>(
        "SELECT coalesce((SELECT string_agg(format('a %s %L', id, data), E'\\n' ORDER BY id) FROM a), '') || E'\\n--\\n' || "
        + "coalesce((SELECT string_agg(format('b %s %s %L', id, a_id, data), E'\\n' ORDER BY id) FROM b), '')");

    /// <summary>Every row with its version (xmin): a write that changed nothing leaves this as it was.</summary>
    public Task<string> VersionsAsync() => ScalarAsync<string>(
        "SELECT coalesce((SELECT string_agg(id || ':' || xmin, ',' ORDER BY id) FROM a), '') || '|' || "
        + "coalesce((SELECT string_agg(id || ':' || xmin, ',' ORDER BY id) FROM b), '')");

    /// <summary>The SQL of every command the API sends to PostgreSQL while <paramref name="action"/> runs (Npgsql's own tracing).</summary>
    public async Task<List<string>> CapturedSqlAsync(Func<Task> action)
    {
        var database = new NpgsqlConnectionStringBuilder(ConnectionString).Database;
        var sql = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == "Npgsql",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = activity =>
            {
                if (SqlOf(activity) is { } text
                    && Equals(activity.GetTagItem("db.namespace") ?? activity.GetTagItem("db.name"), database))
                    sql.Enqueue(text);
            },
        };
        ActivitySource.AddActivityListener(listener);
        await action();
        return [.. sql];
    }

    /// <summary>The SQL text of an Npgsql command span (the tag's name changed with the semantic conventions).</summary>
    public static string? SqlOf(Activity span) => (span.GetTagItem("db.query.text") ?? span.GetTagItem("db.statement")) as string;

    public async Task SeedAsync(int count = 1)
    {
        var response = await CreateClient().PostAsync($"/seed?count={count}", null);
        response.EnsureSuccessStatusCode();
    }

    public async Task<List<ADto>> GetAllAsync() =>
        (await CreateClient().GetFromJsonAsync<List<ADto>>("/a"))!;
}

[CollectionDefinition(Name)]
public sealed class ApiCollection : ICollectionFixture<ApiFactory>
{
    public const string Name = "api";
}

/// <summary>Every test starts on empty tables of the collection's database.</summary>
[Collection(ApiCollection.Name)]
public abstract class ApiTest(ApiFactory api) : IAsyncLifetime
{
    protected ApiFactory Api { get; } = api;
    protected HttpClient Client { get; } = api.CreateClient();

    public Task InitializeAsync() => Api.ResetAsync();
    public Task DisposeAsync() => Task.CompletedTask;
}
