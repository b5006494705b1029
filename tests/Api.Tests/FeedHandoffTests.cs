using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Npgsql;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>From a read to the live feed without a gap: every read's Change-Position, and GET /a/changes?after= it.</summary>
public sealed class FeedHandoffTests(ApiFactory api) : ApiTest(api)
{
    [Fact]
    public async Task A_read_plus_the_events_from_its_position_equal_the_tables_under_api_and_sql_writers()
    {
        await Api.SeedAsync(200);
        using var stop = new CancellationTokenSource();
        var writers = new[] { SqlWriterAsync(1, stop.Token), SqlWriterAsync(2, stop.Token), ApiWriterAsync(stop.Token) };
        await Task.Delay(300);
        var rounds = new List<(string Position, Dictionary<int, string?> A, Dictionary<int, (int?, string?)> B, Sse Feed)>();
        try
        {
            for (var round = 0; round < 8; round++)
            {
                var (position, a, b) = await ReadStreamAsync();
                var feed = await Sse.OpenAsync(Client, query: $"?after={position}");
                Assert.Equal(HttpStatusCode.OK, feed.Response.StatusCode);
                rounds.Add((position, a, b, feed));
                await Task.Delay(100 + 50 * round);
            }
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(writers);
        }
        var (finalA, finalB) = await TablesAsync();
        foreach (var (position, a, b, feed) in rounds)
        {
            await using var subscription = feed;
            foreach (var e in await feed.TakeUntilQuietAsync(TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(60)))
            {
                var (table, op) = (e.Type.Split('.')[0], e.Type.Split('.')[1]);
                var id = e.Row.GetProperty("id").GetInt32();
                var known = table == "a" ? a.ContainsKey(id) : b.ContainsKey(id);
                // An insert of a row the read had is a change it saw, sent again; an update or delete of one it lacks, one missed.
                Assert.True(op == "insert" ? !known : known, $"read at {position}: {e} ({(known ? "a duplicate" : "a gap")})");
                if (op == "delete")
                    _ = table == "a" ? a.Remove(id) : b.Remove(id);
                else if (table == "a")
                    a[id] = e.RowData;
                else
                    b[id] = (e.Row.TryGetProperty("aId", out var aId) && aId.ValueKind == JsonValueKind.Number ? aId.GetInt32() : null, e.RowData);
            }
            Assert.Equal(finalA.OrderBy(p => p.Key), a.OrderBy(p => p.Key));
            Assert.Equal(finalB.OrderBy(p => p.Key), b.OrderBy(p => p.Key));
        }
    }

    [Fact]
    public async Task Every_read_carries_a_position_and_the_table_filter_keeps_to_its_table()
    {
        await Api.SeedAsync();
        string? position = null;
        foreach (var path in new[] { "/a", "/a/first", "/a/stream" })
        {
            using var read = await Client.GetAsync(path);
            Assert.Equal(HttpStatusCode.OK, read.StatusCode);
            position = Assert.Single(read.Headers.GetValues("Change-Position"));
            Assert.Matches("^[0-9a-f]{8}-[0-9A-F]{16}-0-[0-9a-f]{8}(-[0-9a-f]{8})*$", position);
        }
        await using var onlyA = await Sse.OpenAsync(Client, query: $"?after={position}&table=a");
        await using var onlyB = await Sse.OpenAsync(Client, lastEventId: position, query: "?table=b");
        Assert.Equal((HttpStatusCode.OK, HttpStatusCode.OK), (onlyA.Response.StatusCode, onlyB.Response.StatusCode));
        await Api.ExecuteAsync("BEGIN; INSERT INTO a (data) VALUES ('only-a'); INSERT INTO b (a_id, data) VALUES (currval('a_id_seq'), 'only-b'); COMMIT;");
        Assert.Equal([("a.insert", "only-a")], (await onlyA.TakeUntilQuietAsync(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10))).Select(e => (e.Type, e.RowData)));
        Assert.Equal([("b.insert", "only-b")], (await onlyB.TakeUntilQuietAsync(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10))).Select(e => (e.Type, e.RowData)));

        var problem = await ProblemAsync(await Client.GetAsync("/a/changes?table=c"), HttpStatusCode.BadRequest);
        Assert.True(problem.GetProperty("errors").TryGetProperty("table", out _));
        // A position of another database (another source) cannot be served here: 409, as an old id.
        var foreign = "00000000" + position![8..];
        await ProblemAsync(await Client.GetAsync($"/a/changes?after={foreign}"), HttpStatusCode.Conflict);
    }

    async Task<(string, Dictionary<int, string?>, Dictionary<int, (int?, string?)>)> ReadStreamAsync()
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, "/a/stream");
        request.Headers.Accept.ParseAdd("application/x-ndjson");
        using var response = await Client.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var a = new Dictionary<int, string?>();
        var b = new Dictionary<int, (int?, string?)>();
        foreach (var line in (await response.Content.ReadAsStringAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var row = JsonSerializer.Deserialize<ADto>(line, new JsonSerializerOptions(JsonSerializerDefaults.Web))!;
            a[row.Id] = row.Data;
            foreach (var x in row.Bs)
                b[x.Id] = (x.AId, x.Data);
        }
        return (Assert.Single(response.Headers.GetValues("Change-Position")), a, b);
    }

    async Task<(Dictionary<int, string?>, Dictionary<int, (int?, string?)>)> TablesAsync()
    {
        await using var connection = new NpgsqlConnection(Api.ConnectionString);
        await connection.OpenAsync();
        var a = new Dictionary<int, string?>();
        await using (var reader = await new NpgsqlCommand("SELECT id, data FROM a", connection).ExecuteReaderAsync())
            while (await reader.ReadAsync())
                a[reader.GetInt32(0)] = reader.IsDBNull(1) ? null : reader.GetString(1);
        var b = new Dictionary<int, (int?, string?)>();
        await using (var reader = await new NpgsqlCommand("SELECT id, a_id, data FROM b", connection).ExecuteReaderAsync())
            while (await reader.ReadAsync())
                b[reader.GetInt32(0)] = (reader.IsDBNull(1) ? null : reader.GetInt32(1), reader.IsDBNull(2) ? null : reader.GetString(2));
        return (a, b);
    }

    /// <summary>Inserts, updates, deletes and two-row transactions in plain SQL, as fast as one connection goes.</summary>
    async Task SqlWriterAsync(int seed, CancellationToken stop)
    {
        var random = new Random(seed);
        await using var connection = new NpgsqlConnection(Api.ConnectionString);
        await connection.OpenAsync();
        for (var n = 0; !stop.IsCancellationRequested; n++)
        {
            var sql = random.Next(5) switch
            {
                0 => $"INSERT INTO a (data) VALUES ('s{seed}-{n}')",
                1 => $"BEGIN; INSERT INTO a (data) VALUES ('t{seed}-{n}'); INSERT INTO b (a_id, data) VALUES (currval('a_id_seq'), 'tb{seed}-{n}'), (currval('a_id_seq'), NULL); COMMIT",
                2 => $"UPDATE b SET data = 'u{seed}-{n}' WHERE id = (SELECT id FROM b ORDER BY random() LIMIT 1)",
                3 => "DELETE FROM b WHERE id = (SELECT id FROM b WHERE a_id > 100 ORDER BY random() LIMIT 1)",
                _ => $"UPDATE a SET data = 'v{seed}-{n}' WHERE id = (SELECT id FROM a ORDER BY random() LIMIT 1)",
            };
            try
            {
                await new NpgsqlCommand(sql, connection).ExecuteNonQueryAsync(CancellationToken.None);
            }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.DeadlockDetected)
            {
                await new NpgsqlCommand("ROLLBACK", connection).ExecuteNonQueryAsync(CancellationToken.None);
            }
        }
    }

    async Task ApiWriterAsync(CancellationToken stop)
    {
        for (var n = 0; !stop.IsCancellationRequested; n++)
        {
            using var response = await Client.PatchAsJsonAsync("/a/first", new { data = $"p{n}" }, CancellationToken.None);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            if (n % 10 == 0)
                Assert.Equal(HttpStatusCode.Created, (await Client.PostAsync("/seed", null, CancellationToken.None)).StatusCode);
        }
    }
}
