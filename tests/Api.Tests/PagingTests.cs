using System.Net;
using System.Text;
using System.Text.Json;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>Keyset pages on GET /a with RFC 8288 next links, and streams that resume where they were cut.</summary>
public sealed class PagingTests(ApiFactory api) : ApiTest(api)
{
    /// <summary>The target of the response's rel="next" link, or null.</summary>
    static string? NextLink(HttpResponseMessage response)
    {
        if (!response.Headers.TryGetValues("Link", out var values))
            return null;
        var link = string.Join(",", values);
        var match = System.Text.RegularExpressions.Regex.Match(link, "^<([^>]*)>; rel=\"next\"$");
        Assert.True(match.Success, $"Link header {link} is one rel=\"next\" link");
        return match.Groups[1].Value;
    }

    [Fact]
    public async Task Following_next_links_visits_every_a_once_in_order_with_all_its_bs()
    {
        await Api.SeedAsync(4);
        var pages = new List<List<ADto>>();
        var links = new List<string>();
        for (string? path = "/a?limit=5"; path is not null; )
        {
            var response = await Client.GetAsync(path);
            pages.Add(await JsonArrayAsync(response));
            path = NextLink(response);
            if (path is not null)
                links.Add(path);
            Assert.True(pages.Count < 10, "the next links loop");
        }
        Assert.Equal(["/a?after=5&limit=5", "/a?after=10&limit=5"], links);
        Assert.Equal([5, 5, 2], pages.Select(p => p.Count));
        Equivalent(SeedGraph(4), [.. pages.SelectMany(p => p)]);
    }

    [Fact]
    public async Task The_default_page_is_a_thousand_and_only_a_page_with_more_after_it_links_on()
    {
        await Api.ExecuteAsync("INSERT INTO a (data) SELECT 'a' || n FROM generate_series(1, 1000) n; INSERT INTO b (a_id, data) SELECT id, 'b' FROM a WHERE id % 7 = 0");
        var all = await Client.GetAsync("/a");
        var rows = await JsonArrayAsync(all);
        Assert.Equal(Enumerable.Range(1, 1000), rows.Select(a => a.Id));
        Assert.Equal(142, rows.Sum(a => a.Bs.Count));
        Assert.Null(NextLink(all));

        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('one more')");
        var first = await Client.GetAsync("/a");
        Assert.Equal(1000, (await JsonArrayAsync(first)).Count);
        Assert.Equal("/a?after=1000&limit=1000", NextLink(first));
        var last = await Client.GetAsync(NextLink(first));
        Assert.Equal([1001], (await JsonArrayAsync(last)).Select(a => a.Id));
        Assert.Null(NextLink(last));
    }

    [Fact]
    public async Task After_and_limit_select_exactly_the_a_that_follow()
    {
        await Api.SeedAsync(2);
        Equivalent(SeedGraph(2)[2..5], await JsonArrayAsync(await Client.GetAsync("/a?after=2&limit=3")));
        // Ids need not be dense: after names a position, not an A that exists.
        await Api.ExecuteAsync("DELETE FROM b WHERE a_id IN (3, 4); DELETE FROM a WHERE id IN (3, 4)");
        Assert.Equal([5, 6], (await JsonArrayAsync(await Client.GetAsync("/a?after=2&limit=3"))).Select(a => a.Id));
        Assert.Equal([1, 2], (await JsonArrayAsync(await Client.GetAsync("/a?after=-100&limit=2"))).Select(a => a.Id));

        var end = await Client.GetAsync("/a?after=6");
        Assert.Empty(await JsonArrayAsync(end));
        Assert.Null(NextLink(end));
        var whole = await Client.GetAsync("/a?limit=10000");
        Assert.Equal(4, (await JsonArrayAsync(whole)).Count);
        Assert.Null(NextLink(whole));
    }

    [Fact]
    public async Task A_page_is_one_round_trip_with_the_limit_inside_the_join()
    {
        await Api.SeedAsync(3);
        var statements = await Api.CapturedSqlAsync(() => Client.GetAsync("/a?after=3&limit=2"));
        var sql = Assert.Single(statements);
        Assert.Contains("LIMIT", sql);
        Assert.DoesNotContain("OFFSET", sql);
        // The LIMIT on A inside the join, and b's rows read from the page's first A on.
        Assert.Matches(@"FROM \(SELECT [^)]* FROM a WHERE id > \$1 ORDER BY id LIMIT \$2\)", sql);
        Assert.Matches(@"LEFT JOIN b AS b0 ON b0\.a_id = a0\.id AND b0\.a_id > \$1", sql);
    }

    [Fact]
    public async Task A_cut_ndjson_stream_resumed_after_its_last_whole_line_equals_the_whole_stream()
    {
        await Api.SeedAsync(2_000);
        var whole = await NdJsonAsync(await GetAsync("/a/stream", "application/x-ndjson"));
        Assert.Equal(6_000, whole.Count);

        // A client reads part of the stream and hangs up, keeping the whole lines it got.
        string received;
        using (var cut = await Client.SendAsync(new HttpRequestMessage(HttpMethod.Get, "/a/stream") { Headers = { { "Accept", "application/x-ndjson" } } },
            HttpCompletionOption.ResponseHeadersRead))
        {
            await using var body = await cut.Content.ReadAsStreamAsync();
            var buffer = new byte[50_000];
            var read = 0;
            while (read < buffer.Length && await body.ReadAsync(buffer.AsMemory(read)) is > 0 and var n)
                read += n;
            received = Encoding.UTF8.GetString(buffer, 0, read);
        }
        var kept = received[..(received.LastIndexOf('\n') + 1)].Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => JsonSerializer.Deserialize<ADto>(line, Json)!).ToList();
        Assert.InRange(kept.Count, 1, whole.Count - 1);

        var rest = await NdJsonAsync(await GetAsync($"/a/stream?after={kept[^1].Id}", "application/x-ndjson"));
        Equivalent(whole, [.. kept, .. rest]);
    }

    [Fact]
    public async Task A_json_array_stream_resumes_after_an_id_too()
    {
        await Api.SeedAsync(3);
        Equivalent(SeedGraph(3)[4..], await JsonArrayAsync(await Client.GetAsync("/a/stream?after=4")));
        Assert.Empty(await JsonArrayAsync(await Client.GetAsync("/a/stream?after=9")));
    }

    [Fact]
    public async Task A_stream_lists_each_a_s_bs_in_id_order_even_when_a_b_has_moved_to_its_a()
    {
        await Api.SeedAsync(1);
        // B 1 moves from A 1 to A 2: its new row version lies behind B 3's, so ix_b_a_id, which the stream's query reads,
        // gives A 2's Bs as 3, 1. The API sorts them (issue 20: the query orders by A only).
        await Api.ExecuteAsync("UPDATE b SET a_id = 2 WHERE id = 1");
        List<ADto> expected = [new(1, "a1", [new(2, 1, null)]), new(2, "a2", [new(1, 2, null), new(3, 2, null)]),
            new(3, "a3", [new(4, 3, null), new(5, 3, null)])];
        Equivalent(expected, await JsonArrayAsync(await Client.GetAsync("/a/stream")));
        Equivalent(expected, await NdJsonAsync(await GetAsync("/a/stream", "application/x-ndjson")));
        Equivalent(expected, await JsonArrayAsync(await Client.GetAsync("/a")));
    }

    [Fact]
    public async Task A_stream_read_in_batches_holds_every_a_whole_across_the_batches_and_an_a_larger_than_one()
    {
        // The stream reads 1,000 rows first and more later: A 2's 2,501 Bs fill a batch alone (read whole, B 1 moved to
        // it out of order), A 3-1002 have one B each (a batch ends inside them), A 1003 none.
        await Api.ExecuteAsync("""
            INSERT INTO a (data) SELECT 'a' || n FROM generate_series(1, 1004) n;
            INSERT INTO b (a_id, data) SELECT 1, 'b' || n FROM generate_series(1, 10) n;
            INSERT INTO b (a_id, data) SELECT 2, 'b' || n FROM generate_series(11, 2510) n;
            INSERT INTO b (a_id, data) SELECT n - 2508, 'b' || n FROM generate_series(2511, 3510) n;
            INSERT INTO b (a_id, data) SELECT 1004, 'b' || n FROM generate_series(3511, 3513) n;
            UPDATE b SET a_id = 2 WHERE id = 1;
            """);
        List<BDto> Bs(int a, IEnumerable<int> ids) => [.. ids.Select(id => new BDto(id, a, "b" + id))];
        List<ADto> expected = [new(1, "a1", Bs(1, Enumerable.Range(2, 9))), new(2, "a2", Bs(2, [1, .. Enumerable.Range(11, 2500)])),
            .. Enumerable.Range(3, 1000).Select(a => new ADto(a, "a" + a, Bs(a, [a + 2508]))), new(1003, "a1003", []),
            new(1004, "a1004", Bs(1004, Enumerable.Range(3511, 3)))];

        Equivalent(expected, await JsonArrayAsync(await Client.GetAsync("/a/stream")));
        Equivalent(expected, await NdJsonAsync(await GetAsync("/a/stream", "application/x-ndjson")));
        Equivalent(expected[2..], await NdJsonAsync(await GetAsync("/a/stream?after=2", "application/x-ndjson")));
    }

    Task<HttpResponseMessage> GetAsync(string path, string accept) =>
        Client.SendAsync(new HttpRequestMessage(HttpMethod.Get, path) { Headers = { { "Accept", accept } } });
}
