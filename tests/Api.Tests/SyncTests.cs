using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>POST /a reads back what GET /a/stream writes: copies and syncs by id, with Prefer: resolution=….</summary>
public sealed class SyncTests(ApiFactory api) : ApiTest(api)
{
    const string Merge = "resolution=merge-duplicates";
    const string Ignore = "resolution=ignore-duplicates";

    static HttpRequestMessage Ingest(string body, string? prefer = null)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, "/a") { Content = new StringContent(body) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/x-ndjson");
        if (prefer is not null)
            request.Headers.TryAddWithoutValidation("Prefer", prefer);
        return request;
    }

    async Task<string> StreamAsync()
    {
        var request = new HttpRequestMessage(HttpMethod.Get, "/a/stream");
        request.Headers.Accept.ParseAdd("application/x-ndjson");
        var response = await Client.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await response.Content.ReadAsStringAsync();
    }

    /// <summary>Rows (a:ID, b:ID) new or with another version than in <paramref name="before"/>.</summary>
    async Task<HashSet<string>> ChangedSinceAsync(string before)
    {
        static Dictionary<string, string> Parse(string part, string table) => part.Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(p => p.Split(':')).ToDictionary(p => $"{table}:{p[0]}", p => p[1]);
        var (old, now) = (before.Split('|'), (await Api.VersionsAsync()).Split('|'));
        var (was, @is) = (Parse(old[0], "a").Concat(Parse(old[1], "b")).ToDictionary(), Parse(now[0], "a").Concat(Parse(now[1], "b")));
        return @is.Where(r => !was.TryGetValue(r.Key, out var v) || v != r.Value).Select(r => r.Key).ToHashSet();
    }

    /// <summary>A source with history: seeded copies, an edit, Bs with data, and gaps where rows were deleted.</summary>
    async Task<string> SourceAsync()
    {
        await Api.SeedAsync(200);
        await Client.PatchAsync("/a/first", new StringContent("""{"data": "edited"}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.Created, (await Client.SendAsync(Ingest(string.Concat(
            Enumerable.Range(0, 50).Select(i => $$"""{"data": "n{{i}}", "bs": [{"data": "nb{{i}}"}, {"data": null}]}""" + "\n"))))).StatusCode);
        await Api.ExecuteAsync("DELETE FROM b WHERE id % 37 = 0; DELETE FROM b WHERE a_id % 41 = 0; DELETE FROM a WHERE id % 41 = 0");
        return await StreamAsync();
    }

    static async Task<JsonElement> CountsAsync(HttpResponseMessage response, string applied)
    {
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(applied, Assert.Single(response.Headers.GetValues("Preference-Applied")));
        return JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
    }

    static string Counts(JsonElement counts, string table) =>
        $"{counts.GetProperty(table).GetProperty("inserted")} {counts.GetProperty(table).GetProperty("updated")} {counts.GetProperty(table).GetProperty("unchanged")}";

    [Fact]
    public async Task A_stream_merged_into_empty_tables_streams_back_byte_for_byte_and_a_rerun_writes_nothing()
    {
        var source = await SourceAsync();
        var (a, b) = (await Api.ScalarAsync<long>("SELECT count(*) FROM a"), await Api.ScalarAsync<long>("SELECT count(*) FROM b"));
        await Api.ResetAsync();

        var copied = await CountsAsync(await Client.SendAsync(Ingest(source, Merge)), Merge);
        Assert.Equal($"{a} 0 0", Counts(copied, "a"));
        Assert.Equal($"{b} 0 0", Counts(copied, "b"));
        Assert.Equal(source, await StreamAsync());

        // Again: nothing changes, no row gets a new version, no event, next to no WAL.
        await using var feed = await Sse.OpenAsync(Client);
        // The feed starts at its reader's live head, which may not have passed the copy's commit yet: a fence row marks
        // where the copy's events end.
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('fence')");
        while ((await feed.TakeAsync(1))[0].RowData != "fence")
        {
        }
        var before = await Api.VersionsAsync();
        var wal = await Api.ScalarAsync<string>("SELECT pg_current_wal_lsn()::text");
        var again = await CountsAsync(await Client.SendAsync(Ingest(source, Merge)), Merge);
        Assert.Equal($"0 0 {a}", Counts(again, "a"));
        Assert.Equal($"0 0 {b}", Counts(again, "b"));
        Assert.InRange(await Api.ScalarAsync<decimal>($"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal}')"), 0, 256 * 1024);
        Assert.Equal(before, await Api.VersionsAsync());
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('marker')");
        var next = Assert.Single(await feed.TakeAsync(1));
        Assert.Equal(("a.insert", "marker"), (next.Type, next.RowData));

        // Rows without ids take theirs after the largest named ones: the sequences moved past them.
        var (topA, topB) = (await Api.ScalarAsync<int>("SELECT max(id) FROM a"), await Api.ScalarAsync<int>("SELECT max(id) FROM b"));
        await Api.SeedAsync();
        Assert.Equal("3 5", await Api.ScalarAsync<string>(
            $"SELECT (SELECT count(*) FROM a WHERE id > {topA}) || ' ' || (SELECT count(*) FROM b WHERE id > {topB})"));
    }

    [Fact]
    public async Task A_merge_changes_exactly_the_edited_rows_moves_a_b_and_inserts_new_ids_as_events()
    {
        var source = await SourceAsync();
        var lines = source.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var before = await Api.VersionsAsync();
        var want = new HashSet<string>();
        foreach (var line in lines.Skip(10).Take(10))
        {
            line["data"] = line["data"] + "-v2";
            want.Add($"a:{line["id"]}");
        }
        foreach (var line in lines.Skip(100).Where(l => l["bs"]!.AsArray().Count > 0).Take(10))
        {
            line["bs"]![0]!["data"] = "b-v2";
            want.Add($"b:{line["bs"]![0]!["id"]}");
        }
        // A B moves: it is named under another A (and left out of its old one's line).
        var from = lines.Skip(300).First(l => l["bs"]!.AsArray().Count > 1);
        var to = lines[^5];
        var moved = from["bs"]!.AsArray()[^1]!;
        from["bs"]!.AsArray().Remove(moved);
        moved["aId"] = to["id"]!.GetValue<int>();
        to["bs"]!.AsArray().Add(moved.DeepClone());
        want.Add($"b:{moved["id"]}");
        var top = lines.Max(l => l["id"]!.GetValue<int>());
        var body = string.Concat(lines.Select(l => l.ToJsonString() + "\n"))
            + string.Concat(Enumerable.Range(1, 5).Select(i => $$"""{"id": {{top + i}}, "data": "new{{i}}"}""" + "\n"));

        await using var feed = await Sse.OpenAsync(Client);
        var counts = await CountsAsync(await Client.SendAsync(Ingest(body, Merge)), Merge);
        Assert.Equal($"5 10 {lines.Count - 10}", Counts(counts, "a"));
        Assert.Equal(11L, counts.GetProperty("b").GetProperty("updated").GetInt64());

        var changed = await ChangedSinceAsync(before);
        Assert.Equal(want.Concat(Enumerable.Range(1, 5).Select(i => $"a:{top + i}")).Order(), changed.Order());
        Assert.Equal($"{to["id"]}:{moved["data"]?.GetValue<string>() ?? "~"}",
            await Api.ScalarAsync<string>($"SELECT a_id || ':' || coalesce(data, '~') FROM b WHERE id = {moved["id"]}"));
        var events = await feed.TakeAsync(26);
        Assert.Equal(
            Enumerable.Repeat("a.insert", 5).Concat(Enumerable.Repeat("a.update", 10)).Concat(Enumerable.Repeat("b.update", 11)).Order(),
            events.Select(e => e.Type).Order());
    }

    [Fact]
    public async Task Ignore_duplicates_keeps_existing_rows_and_inserts_the_others()
    {
        await Api.SeedAsync();
        var response = await Client.SendAsync(Ingest("""
            {"id": 1, "data": "ignored", "bs": [{"id": 1, "aId": 1, "data": "ignored"}, {"id": 40, "data": "new b"}]}
            {"id": 50, "data": "new a", "bs": [{"id": 2, "data": "ignored"}]}
            """, Ignore));
        var counts = await CountsAsync(response, Ignore);
        Assert.Equal("1 0 1", Counts(counts, "a"));
        Assert.Equal("1 0 2", Counts(counts, "b"));
        Assert.Equal("a1 null 1 null", await Api.ScalarAsync<string>(
            "SELECT a.data || ' ' || coalesce(b.data, 'null') || ' ' || b2.a_id || ' ' || coalesce(b2.data, 'null') FROM a, b, b b2 WHERE a.id = 1 AND b.id = 1 AND b2.id = 2"));
        Assert.Equal("new a|1:new b", await Api.ScalarAsync<string>(
            "SELECT (SELECT data FROM a WHERE id = 50) || '|' || (SELECT a_id || ':' || data FROM b WHERE id = 40)"));
    }

    [Theory]
    [InlineData("""{"id": 100, "data": "ok"}""" + "\n" + """{"id": 2, "data": "clash"}""", "A id 2")]
    [InlineData("""{"id": 100, "data": "ok", "bs": [{"id": 3, "data": "clash"}]}""", "B id 3")]
    public async Task Without_a_preference_an_existing_id_is_409_naming_the_line_and_nothing_is_added(string body, string names)
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        var problem = await ProblemAsync(await Client.SendAsync(Ingest(body)), HttpStatusCode.Conflict);
        var detail = problem.GetProperty("detail").GetString()!;
        Assert.StartsWith($"Line {body.Split('\n').Length} ", detail);
        Assert.Contains(names, detail);
        Assert.Contains("merge-duplicates", detail);
        Assert.Equal(before, await Api.SnapshotAsync());

        // New ids without a preference: a plain 201, the ids as given.
        var response = await Client.SendAsync(Ingest("""{"id": 70, "data": "given", "bs": [{"id": 900, "data": "gb"}]}"""));
        Assert.Equal(HttpStatusCode.Created, response.StatusCode);
        Assert.Equal("""{"a":1,"b":1}""", await response.Content.ReadAsStringAsync());
        Assert.Equal(70, await Api.ScalarAsync<int>("SELECT a_id FROM b WHERE id = 900"));
    }

    public static TheoryData<int, string, string> BadBodies => new()
    {
        { 3, """{"id": 1, "data": "d"}""" + "\n" + """{"id": 2, "data": "d"}""" + "\n" + """{"id": 1, "data": "again"}""", "A id 1 appears twice" },
        { 2, """{"id": 1, "bs": [{"id": 5}]}""" + "\n" + """{"id": 2, "bs": [{"id": 5}]}""", "B id 5" },
        { 1, """{"id": 1, "bs": [{"id": 5, "aId": 2}]}""", "aId is 2" },
        { 1, """{"id": 1, "bs": [{"id": 5, "aId": null}]}""", "$.bs[0].aId is null" },
        { 2, """{"id": 1}""" + "\n" + """{"id": 0}""", "$.id" },
        { 2, """{"id": 1}""" + "\n" + """{"id": -4}""", "$.id" },
        { 2, """{"id": 1}""" + "\n" + """{"id": "7"}""", "$.id" },
        { 2, """{"id": 1}""" + "\n" + """{"id": 2147483648}""", "$.id" },
        { 2, """{"id": 1}""" + "\n" + """{"id": 1.5}""", "$.id" },
        { 2, """{"id": 1}""" + "\n" + """{"data": "no id"}""", "names no id, but line 1 did" },
        { 1, """{"id": 1, "bs": [{"data": "no id"}]}""", "not all of its Bs" },
        { 1, """{"data": "x", "bs": [{"id": 5}]}""", "a B names an id but its A does not" },
    };

    [Theory]
    [MemberData(nameof(BadBodies))]
    public async Task A_body_with_bad_ids_is_400_naming_the_line_and_nothing_is_written(int line, string body, string names)
    {
        await Api.SeedAsync();
        var before = await Api.VersionsAsync();
        var problem = await ProblemAsync(await Client.SendAsync(Ingest(body, Merge)), HttpStatusCode.BadRequest);
        var detail = problem.GetProperty("detail").GetString()!;
        Assert.StartsWith($"Line {line} ", detail);
        Assert.Contains(names, detail);
        Assert.Equal(before, await Api.VersionsAsync());
    }

    [Fact]
    public async Task An_id_another_writer_took_meanwhile_is_a_409_not_a_500()
    {
        await Api.SeedAsync();
        // A writer that named the id the sequence gives next, as one that bypassed the sequence would.
        await Api.ExecuteAsync("INSERT INTO a (id, data) VALUES ((SELECT last_value FROM a_id_seq) + 1, 'taken')");
        var before = await Api.SnapshotAsync();
        var problem = await ProblemAsync(await Client.SendAsync(Ingest("""{"data": "mine"}""")), HttpStatusCode.Conflict);
        Assert.Contains("a_pkey", problem.GetProperty("detail").GetString());
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Fact]
    public async Task A_merge_whose_client_hangs_up_rolls_back()
    {
        await Api.SeedAsync();
        var before = await Api.VersionsAsync();
        var payload = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(1, 30_000).Select(i => $$"""{"id": {{i}}, "data": "m{{i}}"}""" + "\n")));
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(Client.BaseAddress!.Host, Client.BaseAddress.Port);
            var stream = tcp.GetStream();
            await stream.WriteAsync(Encoding.ASCII.GetBytes($"POST /a HTTP/1.1\r\nHost: localhost\r\nPrefer: {Merge}\r\n"
                + $"Content-Type: application/x-ndjson\r\nContent-Length: {payload.Length * 2}\r\n\r\n"));
            await stream.WriteAsync(payload);
            await EventuallyAsync("an open transaction", async () => await Api.OpenTransactionsAsync() > 0);
        }
        await EventuallyAsync("no open transaction", async () => await Api.OpenTransactionsAsync() == 0);
        Assert.Equal(before, await Api.VersionsAsync());
    }

    [Fact]
    public async Task The_document_describes_prefer_and_preference_applied()
    {
        var doc = JsonDocument.Parse(await Client.GetStringAsync("/swagger/v1/swagger.json")).RootElement;
        var ingest = doc.GetProperty("paths").GetProperty("/a").GetProperty("post");
        Assert.Contains(ingest.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == "Prefer"
            && p.GetProperty("in").GetString() == "header" && p.GetProperty("description").GetString()!.Contains(Merge));
        Assert.True(ingest.GetProperty("responses").GetProperty("200").GetProperty("headers").TryGetProperty("Preference-Applied", out _));
        Assert.True(ingest.GetProperty("responses").GetProperty("201").TryGetProperty("content", out _));
    }
}
