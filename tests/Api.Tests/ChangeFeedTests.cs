using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Mvc.Testing;
using Npgsql;
using Testcontainers.PostgreSql;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>GET /a/changes: committed changes by any writer, from PostgreSQL's logical replication, resumable by id.</summary>
public sealed class ChangeFeedTests(ApiFactory api) : ApiTest(api)
{
    static IEnumerable<(string, string?)> Brief(IEnumerable<SseEvent> events) => events.Select(e => (e.Type, e.RowData));

    [Fact]
    public async Task Changes_by_the_api_and_by_sql_arrive_as_events_with_their_rows()
    {
        await using var feed = await Sse.OpenAsync(Client);
        Assert.Equal(HttpStatusCode.OK, feed.Response.StatusCode);
        Assert.Equal("text/event-stream", feed.Response.Content.Headers.ContentType?.MediaType);

        await Api.SeedAsync();
        var seeded = await feed.TakeAsync(8);
        Assert.Equal(["a.insert", "a.insert", "a.insert", "b.insert", "b.insert", "b.insert", "b.insert", "b.insert"], seeded.Select(e => e.Type));
        Assert.Equal("""{"id":1,"data":"a1"}""", seeded[0].Data);
        Assert.Equal("""{"id":5,"aId":3,"data":null}""", seeded[7].Data);

        Assert.Equal(HttpStatusCode.OK, (await Client.PatchAsJsonAsync("/a/first", new { data = "new data" })).StatusCode);
        await Api.ExecuteAsync("UPDATE b SET data = 'é \"quoted\"' WHERE id = 2");
        await Api.ExecuteAsync("DELETE FROM b WHERE id = 3");
        await Api.ExecuteAsync("DELETE FROM b WHERE a_id = 2; DELETE FROM a WHERE id = 2");
        var changed = await feed.TakeAsync(4);
        Assert.Equal("a.update", changed[0].Type);
        Assert.Equal("""{"id":1,"data":"new data"}""", changed[0].Data);
        Assert.Equal("b.update", changed[1].Type);
        Assert.Equal((2, 1, "é \"quoted\""), (changed[1].Row.GetProperty("id").GetInt32(), changed[1].Row.GetProperty("aId").GetInt32(), changed[1].RowData));
        Assert.Equal(("b.delete", """{"id":3}"""), (changed[2].Type, changed[2].Data));
        Assert.Equal(("a.delete", """{"id":2}"""), (changed[3].Type, changed[3].Data));

        var ids = seeded.Concat(changed).Select(e => e.Id!).ToList();
        Assert.Equal(ids.Count, ids.Distinct().Count());
        Assert.Equal(ids.Select(Parse).Order(), ids.Select(Parse));
        Assert.Equal(2000, feed.Retry);
    }

    static (ulong, int) Parse(string id) => id.Split('-') is [_, var lsn, var n] ? (Convert.ToUInt64(lsn, 16), int.Parse(n)) : throw new FormatException(id);

    /// <summary>
    /// An event's id holds the WAL position of its transaction's commit record: a write's token is past it, else a standby
    /// that had replayed only as far as the token would answer without the write. A keyed write commits in the batch that
    /// stores its answer and reads the token (IdempotencyStore.StoreAndCommitAsync), an unkeyed one in round trips of their own.
    /// </summary>
    [Theory]
    [InlineData(null)]
    [InlineData("token-past-commit")]
    public async Task A_writes_Consistency_Token_is_past_its_commit_record(string? key)
    {
        await Api.SeedAsync();
        await using var feed = await Sse.OpenAsync(Client);
        using var patch = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = JsonContent.Create(new { data = "tokened" }) };
        key = key is null ? null : $"{key}-{Guid.NewGuid():N}";
        if (key is not null)
            patch.Headers.Add("Idempotency-Key", key);
        var response = await Client.SendAsync(patch);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var token = NpgsqlTypes.NpgsqlLogSequenceNumber.Parse(response.Headers.GetValues("Consistency-Token").Single());

        // A subscription without an id starts exactly at its own snapshot: nothing of the seed before it, however far
        // behind the reader was (it sent the seed's inserts first on a busy machine, when it started at the reader's head).
        var update = Assert.Single(await feed.TakeAsync(1));
        Assert.Equal(("a.update", "tokened"), (update.Type, update.RowData));
        Assert.True((ulong)token > Parse(update.Id!).Item1, $"token {token} is past the commit in {update.Id}");
        if (key is not null)
            Assert.Equal(200, await Api.ScalarAsync<short>($"SELECT status FROM asyncormapi.idempotency_keys WHERE key = '{key}'"));
    }

    [Fact]
    public async Task A_transactions_changes_arrive_together_at_its_commit_and_a_rolled_back_one_never()
    {
        await using var feed = await Sse.OpenAsync(Client);
        await using var open = new NpgsqlConnection(Api.ConnectionString);
        await open.OpenAsync();
        var tx = await open.BeginTransactionAsync();
        await new NpgsqlCommand("INSERT INTO a (data) VALUES ('tx-1'); INSERT INTO b (a_id, data) VALUES (currval('a_id_seq'), 'tx-1b')", open, tx).ExecuteNonQueryAsync();
        await using (var rolledBack = new NpgsqlConnection(Api.ConnectionString))
        {
            await rolledBack.OpenAsync();
            await using var rb = await rolledBack.BeginTransactionAsync();
            await new NpgsqlCommand("INSERT INTO a (data) VALUES ('rolled back')", rolledBack, rb).ExecuteNonQueryAsync();
            await rb.RollbackAsync();
        }
        // Committed while the first is open: it comes first, and nothing of the open one comes with it.
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('meanwhile')");
        Assert.Equal([("a.insert", "meanwhile")], Brief(await feed.TakeAsync(1)));

        await tx.CommitAsync();
        var together = await feed.TakeAsync(2);
        Assert.Equal([("a.insert", "tx-1"), ("b.insert", "tx-1b")], Brief(together));
        Assert.Equal(Parse(together[0].Id!).Item1, Parse(together[1].Id!).Item1);
        Assert.Equal((1, 2), (Parse(together[0].Id!).Item2, Parse(together[1].Id!).Item2));

        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('marker')");
        Assert.Equal([("a.insert", "marker")], Brief(await feed.TakeAsync(1)));
    }

    [Fact]
    public async Task A_reconnect_with_Last_Event_ID_or_after_replays_exactly_the_missed_changes_then_goes_live()
    {
        string last;
        await using (var feed = await Sse.OpenAsync(Client))
        {
            await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('seen')");
            last = (await feed.TakeAsync(1))[0].Id!;
        }
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('missed 1')");
        await Api.ExecuteAsync("BEGIN; INSERT INTO a (data) VALUES ('missed 2'); INSERT INTO a (data) VALUES ('missed 3'); COMMIT");

        foreach (var (header, query) in new[] { (last, ""), (null, $"?after={last}"), (last, "?after=not-even-an-id") })
        {
            await using var again = await Sse.OpenAsync(Client, header, query);
            Assert.Equal(HttpStatusCode.OK, again.Response.StatusCode);
            Assert.Equal([("a.insert", "missed 1"), ("a.insert", "missed 2"), ("a.insert", "missed 3")], Brief(await again.TakeAsync(3)));
            await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('live')");
            Assert.Equal([("a.insert", "live")], Brief(await again.TakeAsync(1)));
            await Api.ExecuteAsync("DELETE FROM a WHERE data = 'live'");
            Assert.Equal("a.delete", (await again.TakeAsync(1))[0].Type);
        }
    }

    [Theory]
    [InlineData("00000000-0000000000000001-1", "another database's")]
    [InlineData("SAME-0000000000000001-1", "older than the window")]
    [InlineData("SAME-7FFFFFFFFFFFFFFF-1", "beyond the server's WAL")]
    public async Task A_resume_the_feed_cannot_serve_is_409_must_refetch_before_any_event(string id, string why)
    {
        string source;
        await using (var feed = await Sse.OpenAsync(Client))
        {
            await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('x')");
            source = (await feed.TakeAsync(1))[0].Id![..8];
        }
        var response = await Client.SendAsync(new HttpRequestMessage(HttpMethod.Get, "/a/changes")
        {
            Headers = { { "Last-Event-ID", id.Replace("SAME", source) } },
        });
        var problem = await ProblemAsync(response, HttpStatusCode.Conflict);
        Assert.True(problem.GetProperty("detail").GetString()!.StartsWith("must-refetch"), why);
    }

    [Theory]
    [InlineData("Last-Event-ID", "12")]
    [InlineData("Last-Event-ID", "1f0c9a3e-0000000001-x")]
    [InlineData("after", "1f0c9a3e-00000000016B3748-0")]
    public async Task A_malformed_id_is_400_naming_where_it_came_from(string where, string id)
    {
        var request = new HttpRequestMessage(HttpMethod.Get, where == "after" ? $"/a/changes?after={id}" : "/a/changes");
        if (where != "after")
            request.Headers.TryAddWithoutValidation(where, id);
        var problem = await ProblemAsync(await Client.SendAsync(request), HttpStatusCode.BadRequest);
        Assert.Contains(where, problem.GetProperty("detail").GetString());
        Assert.True(problem.GetProperty("errors").TryGetProperty(where, out _));
    }

    [Fact]
    public async Task Reset_truncate_and_tables_recreated_by_sql_each_send_reset_and_the_feed_goes_on()
    {
        await Api.SeedAsync();
        await using var feed = await Sse.OpenAsync(Client);

        Assert.Equal(HttpStatusCode.NoContent, (await Client.PostAsync("/reset", null)).StatusCode);
        Assert.Equal("""{"reason":"reset"}""", Assert.Single(await feed.TakeAsync(1), e => e.Type == "reset").Data);
        await Api.SeedAsync();
        Assert.Equal(8, (await feed.TakeAsync(8)).Count(e => e.Type.EndsWith(".insert")));

        await Api.ExecuteAsync("TRUNCATE b");
        var truncated = (await feed.TakeAsync(1))[0];
        Assert.Equal(("reset", """{"reason":"truncated"}"""), (truncated.Type, truncated.Data));

        // What the seed program's drop_all/create_all does: the feed sees new tables at their first change.
        await Api.ExecuteAsync("DROP TABLE b; DROP TABLE a; CREATE TABLE a (id serial PRIMARY KEY, data varchar); "
            + "CREATE TABLE b (id serial PRIMARY KEY, a_id integer REFERENCES a (id), data varchar)");
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('after drop')");
        Assert.Equal([("reset", null), ("a.insert", "after drop")], Brief(await feed.TakeAsync(2)));
    }

    [Fact]
    public async Task A_transaction_larger_than_the_window_is_one_reset()
    {
        await using var app = Api.With(("ChangeFeed:Window", "100"));
        await using var feed = await Sse.OpenAsync(app.CreateClient());
        await Api.ExecuteAsync("INSERT INTO a (data) SELECT 'bulk ' || n FROM generate_series(1, 500) n");
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('small')");
        var events = await feed.TakeAsync(2);
        Assert.Equal([("reset", null), ("a.insert", "small")], Brief(events));
        Assert.Equal("""{"reason":"large-transaction"}""", events[0].Data);
    }

    [Fact]
    public async Task A_slow_subscriber_is_cut_and_resumes_while_the_others_get_everything()
    {
        // On a real socket: an in-memory test server has no socket buffers to fill.
        await using var app = Api.OnKestrel(("ChangeFeed:MaxLag", "1000"));
        using var client = new HttpClient { BaseAddress = ApiFactory.AddressOf(app) };
        await using var fast = await Sse.OpenAsync(client);

        // A client that reads nothing: once the socket buffers are full, writes to it wait forever.
        using var slow = new TcpClient { ReceiveBufferSize = 64 * 1024 };
        await slow.ConnectAsync(IPAddress.Loopback, client.BaseAddress!.Port);
        var stream = slow.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"GET /a/changes HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"));
        await EventuallyAsync("the slow subscriber's headers", () => Task.FromResult(slow.Available > 0));

        // 3,000 events of 8 KB, far more than the socket buffers hold; each batch reaches the reading subscriber before
        // the next is written, so only the one that reads nothing falls behind.
        const int rows = 3_000;
        var all = new List<SseEvent>();
        for (var batch = 0; batch < rows / 100; batch++)
        {
            await Api.ExecuteAsync($"INSERT INTO a (data) SELECT repeat('x', 8000) || n FROM generate_series({batch * 100 + 1}, {batch * 100 + 100}) n");
            all.AddRange(await fast.TakeAsync(100));
        }
        Assert.All(all, e => Assert.Equal("a.insert", e.Type));

        // The slow one was cut: what its socket holds ends before the last change.
        var received = new MemoryStream();
        try { await stream.CopyToAsync(received).WaitAsync(TimeSpan.FromSeconds(30)); } catch (IOException) { }
        var text = Encoding.UTF8.GetString(received.ToArray());
        var ids = text.Split('\n').Where(l => l.StartsWith("id: ")).Select(l => l[4..]).ToList();
        Assert.InRange(ids.Count, 1, rows - 1000);
        Assert.DoesNotContain(all[^1].Id, ids);

        // It resumes with the last id it received and gets exactly the rest.
        await using var resumed = await Sse.OpenAsync(client, ids[^1]);
        var rest = await resumed.TakeAsync(rows - ids.Count);
        Assert.Equal(all.Skip(ids.Count).Select(e => e.Id), rest.Select(e => e.Id));
    }

    [Fact]
    public async Task A_heartbeat_comes_while_nothing_changes()
    {
        await using var app = Api.With(("ChangeFeed:HeartbeatSeconds", "1"));
        await using var feed = await Sse.OpenAsync(app.CreateClient());
        var opening = feed.Empty;
        await EventuallyAsync("two heartbeats", () => Task.FromResult(feed.Empty >= opening + 2));
    }

    [Fact]
    public async Task Without_wal_level_logical_the_feed_answers_503_and_everything_else_works()
    {
        // script/test's second cluster; with Docker, a container of the same image without the setting.
        await using var container = Api.InContainer ? new PostgreSqlBuilder(ApiFactory.Image).Build() : null;
        if (container is not null)
            await container.StartAsync();
        var server = container?.GetConnectionString() ?? LocalPostgres.Setting("TEST_POSTGRES_REPLICA");
        var database = new NpgsqlConnectionStringBuilder(server) { Database = "asyncormapi_replica_" + Guid.NewGuid().ToString("N")[..8] };
        await using (var admin = new NpgsqlConnection(server))
        {
            await admin.OpenAsync();
            Assert.Equal("replica", await new NpgsqlCommand("SHOW wal_level", admin).ExecuteScalarAsync());
            await new NpgsqlCommand($"CREATE DATABASE {database.Database}", admin).ExecuteNonQueryAsync();
        }
        try
        {
            await using var app = Api.With(("ConnectionStrings:Default", database.ConnectionString));
            var client = app.CreateClient();
            var problem = await ProblemAsync(await client.GetAsync("/a/changes"), HttpStatusCode.ServiceUnavailable);
            Assert.Contains("wal_level=logical", problem.GetProperty("detail").GetString());
            Assert.Equal(HttpStatusCode.NoContent, (await client.PostAsync("/reset", null)).StatusCode);
            Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/seed", null)).StatusCode);
            Assert.Equal(3, (await client.GetFromJsonAsync<List<ADto>>("/a"))!.Count);
        }
        finally
        {
            NpgsqlConnection.ClearAllPools();
            await using var admin = new NpgsqlConnection(server);
            await admin.OpenAsync();
            await new NpgsqlCommand($"DROP DATABASE IF EXISTS {database.Database} WITH (FORCE)", admin).ExecuteNonQueryAsync();
        }
    }

    [Fact]
    public async Task No_slot_is_left_once_the_api_stops()
    {
        var database = new NpgsqlConnectionStringBuilder(Api.ConnectionString).Database;
        var slots = $"SELECT count(*) FROM pg_replication_slots WHERE database = '{database}' AND slot_type = 'logical'";
        var before = await Api.ScalarAsync<long>(slots);
        var app = Api.With(("ChangeFeed:IdleSeconds", "600"));
        await using (var feed = await Sse.OpenAsync(app.CreateClient()))
            Assert.Equal(before + 1, await Api.ScalarAsync<long>(slots + " AND temporary AND active"));
        await app.DisposeAsync();
        await EventuallyAsync("the stopped API's slot to go", async () => await Api.ScalarAsync<long>(slots) == before);
    }
}
