using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using Npgsql;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>
/// The pg_auto_failover formation script/test starts (TEST_FORMATION: two nodes, synchronous replication) and the API on
/// it as a Production process, given only the multi-host connection string: one per class, for all its tests.
/// </summary>
public sealed class Formation : IAsyncLifetime
{
    public const string Key = "ha-test-key";

    /// <summary>Why these tests are skipped, when they are: a plain <c>dotnet test</c> has no formation.</summary>
    public const string Missing = "TEST_FORMATION is not set: script/test starts a pg_auto_failover formation and sets it.";

    public static string? FromEnvironment => Environment.GetEnvironmentVariable("TEST_FORMATION");

    public string ConnectionString { get; } = FromEnvironment ?? "";

    public ApiProcess Api { get; private set; } = null!;
    public HttpClient Client { get; private set; } = null!;

    public IEnumerable<int> Ports => new NpgsqlConnectionStringBuilder(ConnectionString).Host!.Split(',').Select(h => int.Parse(h.Split(':')[1]));

    public async Task InitializeAsync()
    {
        if (FromEnvironment is null)
            return;
        Api = await ApiProcess.StartAsync(ConnectionString, ("Admin__ApiKey", Key), ("RateLimit__WritesPerMinute", "0"));
        Client = new HttpClient { BaseAddress = Api.Address, Timeout = TimeSpan.FromSeconds(30) };
        Client.DefaultRequestHeaders.Add("X-Api-Key", Key);
    }

    public async Task DisposeAsync()
    {
        if (FromEnvironment is not null)
            await Api.DisposeAsync();
    }

    /// <summary>The port of the node that is primary now (null while there is none).</summary>
    public async Task<int?> PrimaryAsync()
    {
        foreach (var port in Ports)
            if (await ScalarAsync<bool?>(port, "SELECT NOT pg_is_in_recovery()") == true)
                return port;
        return null;
    }

    /// <summary>A primary and, on the other node, a standby.</summary>
    public async Task<bool> SettledAsync() =>
        await PrimaryAsync() is { } primary
        && await ScalarAsync<bool?>(Ports.Single(p => p != primary), "SELECT pg_is_in_recovery()") == true;

    public async Task<T?> ScalarAsync<T>(int port, string sql)
    {
        try
        {
            var node = new NpgsqlConnectionStringBuilder(ConnectionString) { Host = "127.0.0.1", Port = port, Pooling = false, Timeout = 3 };
            await using var connection = new NpgsqlConnection(node.ConnectionString);
            await connection.OpenAsync();
            return (T?)await new NpgsqlCommand(sql, connection).ExecuteScalarAsync();
        }
        catch (NpgsqlException)
        {
            return default;
        }
    }

    /// <summary>Runs one of script/lib/formation.sh's functions on the formation (crash a node, restart it).</summary>
    public static async Task ScriptAsync(string call)
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (!File.Exists(Path.Combine(root.FullName, "script", "lib", "formation.sh")))
            root = root.Parent!;
        var start = new ProcessStartInfo("bash", ["-c", $". script/lib/postgres.sh && . script/lib/formation.sh && {call}"])
        {
            WorkingDirectory = root.FullName,
            Environment = { ["FORMATION_DIR"] = Environment.GetEnvironmentVariable("TEST_FORMATION_DIR") },
        };
        using var process = Process.Start(start)!;
        await process.WaitForExitAsync();
        Assert.Equal(0, process.ExitCode);
    }
}

/// <summary>Reads on the standby, read-your-writes by Consistency-Token, and writes that follow the primary through a failover.</summary>
public sealed class HighAvailabilityTests(Formation formation) : IClassFixture<Formation>
{
    HttpClient Client => formation.Client;

    async Task<string> TokenOf(HttpResponseMessage response)
    {
        Assert.True(response.IsSuccessStatusCode, $"{response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        var token = Assert.Single(response.Headers.GetValues("Consistency-Token"));
        Assert.Matches("^[0-9A-F]+/[0-9A-F]+$", token);
        return token;
    }

    async Task<HttpResponseMessage> GetAsync(string path, string? token = null)
    {
        var request = new HttpRequestMessage(HttpMethod.Get, path);
        if (token is not null)
            request.Headers.TryAddWithoutValidation("Consistency-Token", token);
        return await Client.SendAsync(request);
    }

    async Task<int> StandbyAsync()
    {
        var primary = await formation.PrimaryAsync();
        return formation.Ports.Single(p => p != primary);
    }

    [FormationFact]
    public async Task On_a_formation_metrics_name_every_pool_and_no_label_holds_connection_details()
    {
        await EventuallyAsync("a primary and a standby", formation.SettledAsync, seconds: 60);
        await TokenOf(await Client.PostAsync("/seed", null));
        Assert.Equal(HttpStatusCode.OK, (await Client.GetAsync("/a")).StatusCode);
        using (var changes = await Client.GetAsync("/a/changes", HttpCompletionOption.ResponseHeadersRead))
        {
            var metrics = await Client.GetStringAsync("/metrics");
            foreach (var detail in new[] { "Host=", "Username=", "Password=", "Database=" })
                Assert.DoesNotContain(detail, metrics);
            Assert.Contains("db_client_connection_pool_name=\"asyncormapi\"", metrics);
            Assert.Contains("db_client_connection_pool_name=\"asyncormapi-reads\"", metrics);
        }
    }

    [FormationFact]
    public async Task A_read_on_a_lagging_standby_hands_off_to_the_feed_with_exactly_the_changes_it_did_not_see()
    {
        await EventuallyAsync("a primary and a standby", formation.SettledAsync, seconds: 60);
        await TokenOf(await Client.PostAsync("/reset", null));
        var seeded = await TokenOf(await Client.PostAsync("/seed", null));
        // Replayed by the standby (past the feed's slot too, which this first read started), then paused there.
        Assert.Equal(3, (await JsonArrayAsync(await GetAsync("/a", seeded))).Count);
        var standby = await StandbyAsync();
        var primaryNow = await formation.ScalarAsync<string>((await formation.PrimaryAsync())!.Value, "SELECT pg_current_wal_lsn()::text");
        await EventuallyAsync("the standby caught up", async () =>
            await formation.ScalarAsync<bool?>(standby, $"SELECT pg_last_wal_replay_lsn() >= '{primaryNow}'::pg_lsn") == true);
        await formation.ScalarAsync<object>(standby, "SELECT pg_wal_replay_pause()");
        string position;
        try
        {
            await TokenOf(await Client.PatchAsJsonAsync("/a/first", new { data = "while paused" }));
            await TokenOf(await Client.PostAsync("/seed", null));
            // The standby's read: the seed's rows as they were, and where its snapshot ends.
            using var read = await GetAsync("/a");
            var rows = await JsonArrayAsync(read);
            Assert.Equal(("a1", 3), (rows[0].Data, rows.Count));
            position = Assert.Single(read.Headers.GetValues("Change-Position"));
        }
        finally
        {
            await formation.ScalarAsync<object>(standby, "SELECT pg_wal_replay_resume()");
        }
        await using var feed = await Sse.OpenAsync(Client, query: $"?after={position}");
        Assert.Equal(HttpStatusCode.OK, feed.Response.StatusCode);
        // Exactly the writes the standby had not replayed: the PATCH, then the second seed's 3 A and 5 B.
        var events = await feed.TakeUntilQuietAsync(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(20));
        Assert.Equal(["a.update", "a.insert", "a.insert", "a.insert", "b.insert", "b.insert", "b.insert", "b.insert", "b.insert"],
            events.Select(e => e.Type));
        Assert.Equal("while paused", events[0].RowData);
    }

    [FormationFact]
    public async Task A_reads_token_gets_the_write_even_while_the_standby_lags_and_without_it_the_standby_answers()
    {
        await EventuallyAsync("a primary and a standby", formation.SettledAsync, seconds: 60);
        await TokenOf(await Client.PostAsync("/reset", null));
        var seeded = await TokenOf(await Client.PostAsync("/seed", null));
        Assert.Equal(3, (await JsonArrayAsync(await GetAsync("/a", seeded))).Count);

        var standby = await StandbyAsync();
        await formation.ScalarAsync<object>(standby, "SELECT pg_wal_replay_pause()");
        try
        {
            var token = await TokenOf(await Client.PatchAsJsonAsync("/a/first", new { data = "while paused" }));
            // Without the token the standby answers, and it has not replayed the write.
            var stale = await (await GetAsync("/a/first")).Content.ReadFromJsonAsync<ADto>(Json);
            Assert.Equal("a1", stale!.Data);
            // With it: the primary, since the standby does not catch up within the wait.
            Assert.Equal("while paused", (await (await GetAsync("/a/first", token)).Content.ReadFromJsonAsync<ADto>(Json))!.Data);
            Assert.Equal("while paused", (await JsonArrayAsync(await GetAsync("/a?limit=1", token)))[0].Data);
            Assert.Equal("while paused", (await JsonArrayAsync(await GetAsync("/a/stream", token)))[0].Data);
        }
        finally
        {
            await formation.ScalarAsync<object>(standby, "SELECT pg_wal_replay_resume()");
        }

        // Once replayed, the standby serves the token's reads itself; its ETag is the primary's for the same row version.
        var again = await TokenOf(await Client.PatchAsJsonAsync("/a/first", new { data = "replayed" }));
        var read = await GetAsync("/a/first", again);
        Assert.Equal("replayed", (await read.Content.ReadFromJsonAsync<ADto>(Json))!.Data);
        var xmin = await formation.ScalarAsync<string>((await formation.PrimaryAsync())!.Value, "SELECT xmin::text FROM a ORDER BY id LIMIT 1");
        Assert.Equal($"\"{xmin}\"", read.Headers.ETag?.Tag);
    }

    [FormationTheory]
    [InlineData("/a/first", "not-a-token")]
    [InlineData("/a", "not-a-token")]
    [InlineData("/a/stream", "not-a-token")]
    // Well formed, but ahead of the primary's WAL: no write answered it, and waiting for the standby would be in vain.
    [InlineData("/a/first", "FFFFFFFF/FFFFFFFF")]
    [InlineData("/a", "FFFFFFFF/FFFFFFFF")]
    [InlineData("/a/stream", "FFFFFFFF/FFFFFFFF")]
    public async Task A_malformed_token_or_one_ahead_of_the_primary_is_400_naming_the_header(string path, string token)
    {
        await EventuallyAsync("a primary and a standby", formation.SettledAsync, seconds: 60);
        var problem = await ProblemAsync(await GetAsync(path, token), HttpStatusCode.BadRequest);
        Assert.Contains("Consistency-Token", problem.GetProperty("detail").GetString());
        Assert.True(problem.GetProperty("errors").TryGetProperty("Consistency-Token", out _));
    }

    [FormationFact]
    public async Task When_the_primary_dies_writes_answer_503_then_succeed_on_the_promoted_standby_and_each_acknowledged_write_is_there_exactly_once()
    {
        await EventuallyAsync("a primary and a standby", formation.SettledAsync, seconds: 60);
        var before = await TokenOf(await Client.PostAsync("/reset", null));
        var primary = (await formation.PrimaryAsync())!.Value;
        var standby = formation.Ports.Single(p => p != primary);

        var answers = new ConcurrentBag<(string What, object Status, DateTime At)>();
        var acknowledged = 0;
        using var stop = new CancellationTokenSource();
        async Task<object> Send(string what, Func<Task<HttpResponseMessage>> call)
        {
            object status;
            try
            {
                status = (int)(await call()).StatusCode;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { status = e.GetType().Name; }
            answers.Add((what, status, DateTime.UtcNow));
            if (status is not (200 or 201))
                await Task.Delay(100);
            return status;
        }
        async Task Reads()
        {
            while (!stop.IsCancellationRequested)
                await Send("read", () => Client.GetAsync("/a/first"));
        }
        // Each seed is one logical write with a key of its own, sent again with that key after every 503 or cut-off answer
        // until it is acknowledged, also after the load stops: then exactly the acknowledged seeds must be there.
        async Task Writes()
        {
            while (!stop.IsCancellationRequested)
            {
                var key = Guid.NewGuid().ToString();
                while (await Send("write", () => Client.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/seed")
                       { Headers = { { "Idempotency-Key", key } } })) is not 201)
                {
                }
                Interlocked.Increment(ref acknowledged);
            }
        }
        var load = new[] { Writes(), Writes(), Reads(), Reads() };
        await Task.Delay(2000);
        var killed = DateTime.UtcNow;
        await Formation.ScriptAsync($"formation_crash {primary}");
        await EventuallyAsync("a write refused after the kill, then one acknowledged", () => Task.FromResult(
            answers.Where(a => a.What == "write" && a.Status is not 201 && a.At > killed).Select(a => a.At).DefaultIfEmpty(DateTime.MaxValue).Min()
                is var refused && answers.Any(a => a is { What: "write", Status: 201 } && a.At > refused)), seconds: 40);
        await Task.Delay(1000);
        await stop.CancelAsync();
        await Task.WhenAll(load);

        Assert.DoesNotContain(answers, a => a.Status is 500 or 502 or 504);
        Assert.Contains(answers, a => a is { What: "write", Status: 503 });
        Assert.Equal(standby, await formation.PrimaryAsync());
        // A token of the old primary's timeline neither blocks nor fails a read on the new one.
        Assert.Equal(HttpStatusCode.OK, (await GetAsync("/a", before)).StatusCode);
        // Exactly once: every acknowledged seed is on the new primary, and none twice, although writes were cut off mid-commit
        // and retried. A retry of one that had committed was replayed from its key, which replicated with it.
        Assert.Equal(3L * acknowledged, await formation.ScalarAsync<long>(standby, "SELECT count(*) FROM a"));

        // The old primary comes back as a standby by itself once its keeper runs again.
        await Formation.ScriptAsync("formation_restart n" + (formation.Ports.ToList().IndexOf(primary) + 1));
        await EventuallyAsync("the old primary back as a standby", async () =>
            await formation.ScalarAsync<bool?>(primary, "SELECT pg_is_in_recovery()") == true, seconds: 60);
    }
}

/// <summary>A test on the formation: skipped, with the reason, where none was started.</summary>
public sealed class FormationFactAttribute : FactAttribute
{
    public FormationFactAttribute() => Skip = Formation.FromEnvironment is null ? Formation.Missing : null;
}

/// <inheritdoc cref="FormationFactAttribute"/>
public sealed class FormationTheoryAttribute : TheoryAttribute
{
    public FormationTheoryAttribute() => Skip = Formation.FromEnvironment is null ? Formation.Missing : null;
}
