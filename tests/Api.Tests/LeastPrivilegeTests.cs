using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using Npgsql;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>
/// The API as a role that is not a superuser, in a database an administrator prepared once with script/sql/grant.sql,
/// run through psql as the docs say.
/// </summary>
public sealed class LeastPrivilegeTests(ApiFactory api) : ApiTest(api)
{
    // The documented default role: its name is also the API's own schema, so its search_path ("$user", public) finds that first.
    const string Role = "asyncormapi";

    [Fact]
    public async Task A_role_that_is_not_a_superuser_runs_the_scenario_the_feed_and_the_ingest()
    {
        await using var database = await GrantedDatabase.CreateAsync(Api.ConnectionString, Role);
        Assert.False(await database.ScalarAsync<bool>($"SELECT rolsuper FROM pg_roles WHERE rolname = '{Role}'"));
        await using var app = Api.With(("ConnectionStrings:Default", database.RoleConnectionString));
        var client = app.CreateClient();

        Assert.Equal(HttpStatusCode.NoContent, (await client.PostAsync("/reset", null)).StatusCode);
        await using var feed = await Sse.OpenAsync(client);
        Assert.Equal(HttpStatusCode.OK, feed.Response.StatusCode);
        Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/seed", null)).StatusCode);
        Assert.Equal(3, (await client.GetFromJsonAsync<List<ADto>>("/a"))!.Count);
        var streamed = await client.GetStringAsync("/a/stream");
        Assert.Equal(3, System.Text.Json.JsonDocument.Parse(streamed).RootElement.GetArrayLength());
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "new data" })).StatusCode);

        // An ingest with an Idempotency-Key: its answer is kept in the API's own schema, which the role owns.
        for (var attempt = 0; attempt < 2; attempt++)
        {
            using var ingest = new HttpRequestMessage(HttpMethod.Post, "/a")
            {
                Content = new StringContent("{\"data\": \"x\", \"bs\": [{\"data\": \"y\"}]}\n", Encoding.UTF8, "application/x-ndjson"),
            };
            ingest.Headers.Add("Idempotency-Key", "least-privilege");
            using var response = await client.SendAsync(ingest);
            Assert.Equal(HttpStatusCode.Created, response.StatusCode);
            Assert.Equal(attempt == 1, response.Headers.Contains("Idempotent-Replayed"));
        }

        var events = await feed.TakeAsync(10);
        Assert.Equal(["a.insert", "a.insert", "a.insert", "b.insert", "b.insert", "b.insert", "b.insert", "b.insert", "a.update", "a.insert"],
            events.Select(e => e.Type));
        Assert.Equal("new data", events[8].RowData);
        Assert.Equal(4L, await database.ScalarAsync<long>("SELECT count(*) FROM a"));
        Assert.Equal(Role, await database.ScalarAsync<string>("SELECT tableowner::text FROM pg_tables WHERE tablename = 'a'"));
        // The seed's tables, where the seed program and the publication find them, and nowhere else.
        Assert.Equal("public.a public.b", await database.ScalarAsync<string>(
            "SELECT string_agg(schemaname || '.' || tablename, ' ' ORDER BY tablename) FROM pg_tables WHERE tablename IN ('a', 'b')"));
    }

    [Fact]
    public async Task A_missing_privilege_is_a_503_that_names_it_and_how_to_grant_it()
    {
        await using var database = await GrantedDatabase.CreateAsync(Api.ConnectionString, Role + "_norepl");
        await database.ExecuteAsync($"ALTER ROLE {Role}_norepl NOREPLICATION");
        await using var app = Api.With(("ConnectionStrings:Default", database.RoleConnectionString));
        var client = app.CreateClient();

        using var changes = await client.GetAsync("/a/changes", HttpCompletionOption.ResponseHeadersRead);
        var problem = await ProblemAsync(changes, HttpStatusCode.ServiceUnavailable);
        Assert.Equal("The database role lacks a privilege", problem.GetProperty("title").GetString());
        var detail = problem.GetProperty("detail").GetString()!;
        Assert.Contains("replication role", detail);
        Assert.Contains("ALTER ROLE ... REPLICATION", detail);
        Assert.Contains("script/sql/grant.sql", detail);
        // The rest of the API works without it.
        Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/seed", null)).StatusCode);
        Assert.Equal(3, (await client.GetFromJsonAsync<List<ADto>>("/a"))!.Count);
    }

    /// <summary>A database of its own, with <c>script/sql/grant.sql</c> run in it by psql as the superuser, for one role.</summary>
    sealed class GrantedDatabase : IAsyncDisposable
    {
        readonly string _admin;
        readonly string _role;

        GrantedDatabase(string admin, string role, string roleConnectionString)
        {
            _admin = admin;
            _role = role;
            RoleConnectionString = roleConnectionString;
        }

        public string RoleConnectionString { get; }

        public static async Task<GrantedDatabase> CreateAsync(string superuser, string role)
        {
            var settings = new NpgsqlConnectionStringBuilder(superuser);
            var name = $"asyncormapi_least_{Guid.NewGuid():N}"[..40];
            await using (var connection = new NpgsqlConnection(superuser))
            {
                await connection.OpenAsync();
                await new NpgsqlCommand($"CREATE DATABASE {name}", connection).ExecuteNonQueryAsync();
            }
            settings.Database = name;
            var admin = settings.ConnectionString;

            var grant = Path.Combine(DeliveryTests.Root, "script", "sql", "grant.sql");
            var psql = new ProcessStartInfo(Psql, ["-X", "-q", "-h", settings.Host!, "-p", settings.Port.ToString(), "-U", settings.Username!,
                "-d", name, "-v", $"role={role}", "-f", grant])
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
            };
            if (settings.Password is { } password)
                psql.Environment["PGPASSWORD"] = password;
            using var process = Process.Start(psql)!;
            var errors = await process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            Assert.True(process.ExitCode == 0, $"psql -f script/sql/grant.sql failed: {errors}");

            var asRole = new NpgsqlConnectionStringBuilder(admin) { Username = role, Password = null };
            return new GrantedDatabase(admin, role, asRole.ConnectionString);
        }

        public async Task<T> ScalarAsync<T>(string sql)
        {
            await using var connection = new NpgsqlConnection(_admin);
            await connection.OpenAsync();
            return (T)(await new NpgsqlCommand(sql, connection).ExecuteScalarAsync())!;
        }

        public async Task ExecuteAsync(string sql)
        {
            await using var connection = new NpgsqlConnection(_admin);
            await connection.OpenAsync();
            await new NpgsqlCommand(sql, connection).ExecuteNonQueryAsync();
        }

        public async ValueTask DisposeAsync()
        {
            NpgsqlConnection.ClearAllPools();
            var settings = new NpgsqlConnectionStringBuilder(_admin);
            var name = settings.Database;
            settings.Database = "postgres";
            await using var connection = new NpgsqlConnection(settings.ConnectionString);
            await connection.OpenAsync();
            await new NpgsqlCommand($"DROP DATABASE IF EXISTS {name} WITH (FORCE)", connection).ExecuteNonQueryAsync();
            await new NpgsqlCommand($"DROP ROLE IF EXISTS {_role}", connection).ExecuteNonQueryAsync();
        }

        /// <summary>psql from the PostgreSQL server's own folder (Debian keeps it off PATH), else from PATH.</summary>
        static string Psql => Directory.Exists("/usr/lib/postgresql")
            && Directory.GetDirectories("/usr/lib/postgresql").Select(d => Path.Combine(d, "bin", "psql")).Where(File.Exists)
                .OrderDescending().FirstOrDefault() is { } found
                ? found
                : "psql";
    }
}
