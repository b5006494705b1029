using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>POST /a: NDJSON lines copied into PostgreSQL in one transaction, all or nothing.</summary>
public sealed class IngestTests(ApiFactory api) : ApiTest(api)
{
    /// <summary>Line i (from 0): A "r{i}" with i % 4 Bs, every other B's data null; some lines leave bs out.</summary>
    static string Line(int i)
    {
        var bs = Enumerable.Range(0, i % 4).Select(j => new { data = j % 2 == 1 ? null : $"b{i}.{j}" }).ToArray();
        return (bs.Length == 0 && i % 8 == 0 ? JsonSerializer.Serialize(new { data = $"r{i}" }) : JsonSerializer.Serialize(new { data = $"r{i}", bs })) + "\n";
    }

    static IEnumerable<string> Lines(int count) => Enumerable.Range(0, count).Select(Line);

    static HttpContent NdJson(IEnumerable<string> lines) => NdJson(Encoding.UTF8.GetBytes(string.Concat(lines)));

    static HttpContent NdJson(byte[] body)
    {
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-ndjson");
        return content;
    }

    /// <summary>Sends half of a 60,000-line body over a raw socket, and hangs up once <paramref name="underWay"/> holds.</summary>
    async Task HangUpMidBodyAsync(string what, Func<Task<bool>> underWay)
    {
        var payload = Encoding.UTF8.GetBytes(string.Concat(Lines(30_000)));
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(Client.BaseAddress!.Host, Client.BaseAddress.Port);
        var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(
            $"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-ndjson\r\nContent-Length: {payload.Length * 2}\r\n\r\n"));
        await stream.WriteAsync(payload);
        await EventuallyAsync(what, underWay);
    }

    [Fact]
    public async Task Every_line_lands_in_line_order_with_ids_from_the_tables_sequences()
    {
        await Api.SeedAsync();
        const int n = 25_000; // more than one COPY batch
        var response = await Client.PostAsync("/a", NdJson(Lines(n)));

        Assert.Equal(HttpStatusCode.Created, response.StatusCode);
        Assert.Equal("/a", response.Headers.Location?.OriginalString);
        var bs = Enumerable.Range(0, n).Sum(i => i % 4);
        Assert.Equal($$"""{"a":{{n}},"b":{{bs}}}""", await response.Content.ReadAsStringAsync());
        Assert.Equal($"{n + 3} {bs + 5}", await Api.ScalarAsync<string>("SELECT (SELECT count(*) FROM a) || ' ' || (SELECT count(*) FROM b)"));
        // A ids follow line order, after the seed's three.
        Assert.Equal(0L, await Api.ScalarAsync<long>("SELECT count(*) FROM a WHERE id > 3 AND data <> 'r' || (id - 4)"));
        Assert.Equal("b12347.0,~,b12347.2", await Api.ScalarAsync<string>(
            "SELECT string_agg(coalesce(b.data, '~'), ',' ORDER BY b.id) FROM a JOIN b ON b.a_id = a.id WHERE a.data = 'r12347'"));

        // The sequences carried on: a plain seed continues after the ingested rows.
        await Api.SeedAsync();
        Assert.Equal($"{n + 4} {bs + 6}", await Api.ScalarAsync<string>("SELECT min(a.id) || ' ' || min(b.id) FROM a JOIN b ON b.a_id = a.id WHERE a.id > 3 + " + n));
    }

    [Fact]
    public async Task Null_data_blank_lines_crlf_and_a_last_line_without_newline_are_fine()
    {
        var body = "{\"data\": null, \"bs\": [{\"data\": null}]}\r\n\n   \n{\"bs\": [], \"data\": \"émoji 🎉\"}\n{\"data\": \"last\"}";
        var response = await Client.PostAsync("/a", NdJson(Encoding.UTF8.GetBytes(body)));
        Assert.Equal(HttpStatusCode.Created, response.StatusCode);
        Equivalent([new(1, null, [new(1, 1, null)]), new(2, "émoji 🎉", []), new(3, "last", [])], await Api.GetAllAsync());
    }

    public static TheoryData<int, string, string> BadLines => new()
    {
        // line number, the bad line, what the detail names besides the line
        { 3, """{"data": 5}""", "$.data" },
        { 7, """{"data": "x" """, "not valid JSON" },
        { 2, """{"data": "nul\u0000"}""", "NUL" },
        { 4, """{"data": "x", "bs": [{"data": "nul\u0000"}]}""", "$.bs[0].data" },
        { 9, """{"data": "x", "bs": {"data": "y"}}""", "$.bs" },
        { 5, """{"data": "x", "bs": [{"data": "y", "bs": []}]}""", "$.bs[0].bs" },
        { 6, """{"id": 7, "data": "x"}""", "names an id, but line 1 named none" },
        { 8, """{"data": "lone \ud800 surrogate"}""", "$.data" },
        { 10, """null""", "null" },
        { 11, """["x"]""", "$" },
        { 12, """{"data": "x", "bs": [null]}""", "$.bs[0]" },
        { 25_001, """{"data": ["x"]}""", "$.data" }, // after two COPY batches went to the server
    };

    [Theory]
    [MemberData(nameof(BadLines))]
    public async Task A_bad_line_anywhere_rejects_the_whole_body_and_names_its_line(int number, string bad, string names)
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        var lines = Lines(number + 10).Select((line, i) => i == number - 1 ? bad + "\n" : line);

        var problem = await ProblemAsync(await Client.PostAsync("/a", NdJson(lines)), HttpStatusCode.BadRequest);
        var detail = problem.GetProperty("detail").GetString()!;
        Assert.StartsWith($"Line {number} ", detail);
        Assert.Contains(names, detail);
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Fact]
    public async Task Invalid_utf8_and_overlong_lines_are_rejected_by_line_number()
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        byte[] notUtf8 = [.. Encoding.UTF8.GetBytes(Line(0) + Line(1)), .. "{\"data\": \""u8, 0xC3, 0x28, 0xFF, .. "\"}\n"u8];
        var problem = await ProblemAsync(await Client.PostAsync("/a", NdJson(notUtf8)), HttpStatusCode.BadRequest);
        Assert.StartsWith("Line 3 ", problem.GetProperty("detail").GetString());
        Assert.Contains("UTF-8", problem.GetProperty("detail").GetString());

        var overlong = Line(0) + $$"""{"data": "{{new string('x', 1024 * 1024)}}"}""" + "\n" + Line(2);
        problem = await ProblemAsync(await Client.PostAsync("/a", NdJson([overlong])), HttpStatusCode.BadRequest);
        Assert.StartsWith("Line 2 ", problem.GetProperty("detail").GetString());
        Assert.Contains("1 MiB", problem.GetProperty("detail").GetString());
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Fact]
    public async Task A_client_that_hangs_up_mid_body_leaves_nothing_behind()
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        // Hang up only once the ingest's transaction is under way on the server.
        await HangUpMidBodyAsync("an open transaction", async () => await Api.OpenTransactionsAsync() > 0);
        await EventuallyAsync("no open transaction", async () => await Api.OpenTransactionsAsync() == 0);
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Fact]
    public async Task The_body_limit_is_a_setting_and_over_it_nothing_is_added()
    {
        await using var small = Api.OnKestrel(("Ingest:MaxBodyBytes", "100000"));
        using var client = new HttpClient { BaseAddress = ApiFactory.AddressOf(small) };
        var before = await Api.SnapshotAsync();
        var problem = await ProblemAsync(await client.PostAsync("/a", NdJson(Lines(20_000))), HttpStatusCode.RequestEntityTooLarge);
        Assert.DoesNotContain("Exception", problem.GetProperty("detail").GetString());
        Assert.Equal(before, await Api.SnapshotAsync());
        Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/a", NdJson(Lines(100)))).StatusCode);
    }

    [Fact]
    public async Task Outside_development_it_takes_the_admin_key()
    {
        await using var production = Api.WithWebHostBuilder(b => b.UseEnvironment("Production").UseSetting("Admin:ApiKey", "ingest-key"));
        var client = production.CreateClient();
        var before = await Api.SnapshotAsync();
        await ProblemAsync(await client.PostAsync("/a", NdJson(Lines(5))), HttpStatusCode.Unauthorized);
        Assert.Equal(before, await Api.SnapshotAsync());
        client.DefaultRequestHeaders.Add("X-Api-Key", "ingest-key");
        Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/a", NdJson(Lines(5)))).StatusCode);
        Assert.Equal(5L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    const string ForeignKeys = "SELECT string_agg(conname || ': ' || pg_get_constraintdef(oid) || ' ' || convalidated, '; ') FROM pg_constraint WHERE contype = 'f'";
    const string TheKey = "b_a_id_fkey: FOREIGN KEY (a_id) REFERENCES a(id) true";

    /// <summary>The spools open in this process (the test host's API): unlinked at once, they are seen only as open files.</summary>
    static string[] Spools() => [.. Directory.EnumerateFileSystemEntries("/proc/self/fd")
        .Select(fd => { try { return new FileInfo(fd).LinkTarget ?? ""; } catch (IOException) { return ""; } })
        .Where(target => target.Contains("asyncormapi-ingest-"))];

    [Fact]
    public async Task A_body_into_empty_tables_is_read_whole_then_copied_with_the_key_set_aside_and_checked_after()
    {
        const int n = 25_000; // three COPY batches
        HttpResponseMessage? response = null;
        var sql = await Api.CapturedSqlAsync(async () => response = await Client.PostAsync("/a", NdJson(Lines(n))));

        Assert.Equal(HttpStatusCode.Created, response!.StatusCode);
        var bs = Enumerable.Range(0, n).Sum(i => i % 4);
        Assert.Equal($$"""{"a":{{n}},"b":{{bs}}}""", await response.Content.ReadAsStringAsync());
        Assert.Contains("ALTER TABLE b DROP CONSTRAINT b_a_id_fkey", sql);
        Assert.Contains("ALTER TABLE b ADD CONSTRAINT b_a_id_fkey FOREIGN KEY (a_id) REFERENCES a(id)", sql);
        Assert.Equal(TheKey, await Api.ScalarAsync<string>(ForeignKeys));
        Assert.Equal(0L, await Api.ScalarAsync<long>("SELECT count(*) FROM a WHERE data <> 'r' || (id - 1)"));
        Assert.Equal("b12347.0,~,b12347.2", await Api.ScalarAsync<string>(
            "SELECT string_agg(coalesce(b.data, '~'), ',' ORDER BY b.id) FROM a JOIN b ON b.a_id = a.id WHERE a.data = 'r12347'"));
        Assert.Equal(bs, await Api.ScalarAsync<long>("SELECT count(*) FROM b JOIN a ON a.id = b.a_id"));
        Assert.Empty(Spools());
        // The key holds again: an orphan is refused.
        var orphan = await Assert.ThrowsAsync<Npgsql.PostgresException>(() => Api.ExecuteAsync("INSERT INTO b (a_id) VALUES (99999999)"));
        Assert.Equal(Npgsql.PostgresErrorCodes.ForeignKeyViolation, orphan.SqlState);
    }

    [Theory]
    [InlineData("0")]      // never
    [InlineData("15000")]  // fewer rows than the body's 37,500: the first batches spooled, the rest copied as it comes
    public async Task A_body_past_the_setting_is_copied_as_it_arrives_with_the_key_in_place(string maxRows)
    {
        await using var app = Api.With(("Ingest:MaxRowsWithKeyAside", maxRows));
        var client = app.CreateClient();
        const int n = 25_000;
        var sql = await Api.CapturedSqlAsync(async () =>
            Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/a", NdJson(Lines(n)))).StatusCode));

        Assert.DoesNotContain(sql, s => s.StartsWith("ALTER TABLE") || s.Contains("LOCK TABLE"));
        Assert.Equal(TheKey, await Api.ScalarAsync<string>(ForeignKeys));
        Assert.Equal($"{n} {Enumerable.Range(0, n).Sum(i => i % 4)}", await Api.ScalarAsync<string>(
            "SELECT (SELECT count(*) FROM a) || ' ' || (SELECT count(*) FROM b)"));
        Assert.Equal(0L, await Api.ScalarAsync<long>("SELECT count(*) FROM a WHERE data <> 'r' || (id - 1)"));
        Assert.Empty(Spools());
    }

    [Fact]
    public async Task A_body_into_tables_with_rows_keeps_the_key_in_place()
    {
        await Api.SeedAsync();
        var sql = await Api.CapturedSqlAsync(async () =>
            Assert.Equal(HttpStatusCode.Created, (await Client.PostAsync("/a", NdJson(Lines(100)))).StatusCode));
        Assert.DoesNotContain(sql, s => s.StartsWith("ALTER TABLE") || s.Contains("LOCK TABLE"));
        Assert.Equal(TheKey, await Api.ScalarAsync<string>(ForeignKeys));
        Assert.Equal(103L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    [Fact]
    public async Task A_body_into_tables_another_transaction_holds_keeps_the_key_in_place()
    {
        // A reader in the middle of its transaction holds a: the ingest must not queue for the table's lock.
        await using var reader = await Api.HoldTableAsync("a");
        var sql = await Api.CapturedSqlAsync(async () =>
            Assert.Equal(HttpStatusCode.Created, (await Client.PostAsync("/a", NdJson(Lines(100)))).StatusCode));
        Assert.DoesNotContain(sql, s => s.StartsWith("ALTER TABLE"));
        Assert.Equal(TheKey, await Api.ScalarAsync<string>(ForeignKeys));
        await reader.ReleaseAsync();
        Assert.Equal(100L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    [Fact]
    public async Task A_bad_line_in_a_body_into_empty_tables_adds_nothing_and_leaves_the_key_alone()
    {
        var lines = Lines(25_000).Select((line, i) => i == 21_999 ? "{\"data\": 5}\n" : line);
        var sql = await Api.CapturedSqlAsync(async () =>
            Assert.StartsWith("Line 22000 ", (await ProblemAsync(await Client.PostAsync("/a", NdJson(lines)), HttpStatusCode.BadRequest))
                .GetProperty("detail").GetString()));

        Assert.DoesNotContain(sql, s => s.StartsWith("ALTER TABLE") || s.StartsWith("COPY"));
        Assert.Equal(TheKey, await Api.ScalarAsync<string>(ForeignKeys));
        Assert.Equal("\n--\n", await Api.SnapshotAsync());
        Assert.Empty(Spools());
    }

    [Fact]
    public async Task A_client_that_hangs_up_while_its_body_is_read_whole_leaves_nothing_behind()
    {
        await HangUpMidBodyAsync("the body being read into a file", () => Task.FromResult(Spools().Length > 0));
        await EventuallyAsync("the file gone", () => Task.FromResult(Spools().Length == 0));
        Assert.Equal("\n--\n", await Api.SnapshotAsync());
        Assert.Equal(TheKey, await Api.ScalarAsync<string>(ForeignKeys));
        Assert.Equal(0L, await Api.OpenTransactionsAsync());
    }
}
