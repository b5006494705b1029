using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Mvc.Testing;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>
/// No anonymous client can starve, bloat or stall the API (issue 16): every resource a request can hold has a bound, in
/// settings, in the answers (429, 503, 408 with Retry-After) and in /metrics.
/// </summary>
public sealed class BoundsTests(ApiFactory api) : ApiTest(api)
{
    /// <summary>
    /// A client that asks for <paramref name="path"/> from <paramref name="from"/> and then reads nothing more than the
    /// status line and headers, as a slow client does: the server's writes fill the socket and wait.
    /// </summary>
    static async Task<(Socket Socket, int Status)> SlowClientAsync(WebApplicationFactory<Program> app, string from, string path)
    {
        var address = ApiFactory.AddressOf(app);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 4096 };
        socket.Bind(new IPEndPoint(IPAddress.Parse(from), 0));
        await socket.ConnectAsync(address.Host, address.Port);
        await socket.SendAsync(Encoding.ASCII.GetBytes($"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"));
        var head = new byte[256];
        var n = await socket.ReceiveAsync(head);
        var status = int.Parse(Encoding.ASCII.GetString(head, 0, n).Split(' ')[1]);
        return (socket, status);
    }

    static async Task<string> MetricsAsync(WebApplicationFactory<Program> app) =>
        await ApiFactory.ClientFrom(app, "127.0.0.1").GetStringAsync("/metrics");

    static long Gauge(string metrics, string name, string? kind = null) =>
        long.Parse(Regex.Match(metrics, $@"^{name}(\{{[^}}]*{(kind is null ? "" : $"kind=\"{kind}\"")}[^}}]*\}})? (\d+)", RegexOptions.Multiline).Groups[2].Value);

    static async Task<HttpResponseMessage> GetAsync(HttpClient client, string path) =>
        await client.GetAsync(path, HttpCompletionOption.ResponseHeadersRead);

    [Fact]
    public async Task Streams_are_capped_per_client_and_in_total_and_short_requests_never_wait_on_them()
    {
        // 30,000 A of 2 KB: a stream that a client does not read stays open, holding its connection.
        await Api.SeedAsync(10_000);
        await Api.ExecuteAsync("UPDATE a SET data = repeat('x', 2000)");
        await using var app = Api.OnKestrel(("Streams:PerClient", "2"), ("Streams:Total", "3"));
        var slow = new List<Socket>();
        try
        {
            for (var i = 0; i < 2; i++)
            {
                var (socket, status) = await SlowClientAsync(app, "127.0.0.1", "/a/stream");
                slow.Add(socket);
                Assert.Equal(200, status);
            }
            // Streams waiting on their clients hold back no other stream: they gave back their turns at PostgreSQL.
            using var second = ApiFactory.ClientFrom(app, "127.0.0.2");
            using (var full = await GetAsync(second, "/a/stream?after=29990"))
            {
                Assert.Equal(HttpStatusCode.OK, full.StatusCode);
                Assert.Equal(Enumerable.Range(29_991, 10), (await NdJsonOrArrayAsync(full)).Select(a => a.Id));
            }
            // Over this client's cap: 429, whatever the other clients do.
            using var mine = ApiFactory.ClientFrom(app, "127.0.0.1");
            using var perClient = await GetAsync(mine, "/a/stream");
            var problem = await ProblemAsync(perClient, HttpStatusCode.TooManyRequests);
            Assert.Contains("2 streams", problem.GetProperty("detail").GetString());
            Assert.True(int.Parse(perClient.Headers.GetValues("Retry-After").Single()) > 0);

            var (third, thirdStatus) = await SlowClientAsync(app, "127.0.0.2", "/a/stream");
            slow.Add(third);
            Assert.Equal(200, thirdStatus);
            // Over the total: 503 for a client that holds none.
            using var other = ApiFactory.ClientFrom(app, "127.0.0.3");
            using var total = await GetAsync(other, "/a/stream");
            await ProblemAsync(total, HttpStatusCode.ServiceUnavailable);
            Assert.True(total.Headers.Contains("Retry-After"));

            // Short requests and probes answer meanwhile, and /metrics shows the cap in use.
            Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("/a/first")).StatusCode);
            Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("/a?limit=5")).StatusCode);
            Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("/health/live")).StatusCode);
            Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("/health/ready")).StatusCode);
            var metrics = await MetricsAsync(app);
            Assert.Equal(3, Gauge(metrics, "asyncormapi_streams_open", "stream"));
            Assert.Equal(3, Gauge(metrics, "asyncormapi_streams_limit", "stream"));
        }
        finally
        {
            slow.ForEach(s => s.Dispose());
        }

        // Once they have gone, their queries are cancelled on the server and the caps are free again.
        await EventuallyAsync("no stream query left running", async () => await Api.ScalarAsync<long>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            + "AND backend_type = 'client backend' AND pid <> pg_backend_pid()") == 0);
        using var again = ApiFactory.ClientFrom(app, "127.0.0.1");
        await EventuallyAsync("the streams' slots freed", async () => Gauge(await MetricsAsync(app), "asyncormapi_streams_open", "stream") == 0);
        for (var i = 0; i < 3; i++)
        {
            using var response = await GetAsync(again, "/a/stream?after=29990");
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(10, (await NdJsonOrArrayAsync(response)).Count);
        }
    }

    static async Task<List<ADto>> NdJsonOrArrayAsync(HttpResponseMessage response) =>
        System.Text.Json.JsonSerializer.Deserialize<List<ADto>>(await response.Content.ReadAsStringAsync(), Json)!;

    [Fact]
    public async Task Change_feed_subscriptions_are_capped_per_client_and_in_total()
    {
        await using var app = Api.OnKestrel(("ChangeFeed:SubscribersPerClient", "2"), ("ChangeFeed:MaxSubscribers", "3"));
        using var mine = ApiFactory.ClientFrom(app, "127.0.0.1");
        using var other = ApiFactory.ClientFrom(app, "127.0.0.2");
        using var third = ApiFactory.ClientFrom(app, "127.0.0.3");
        await using var a = await Sse.OpenAsync(mine);
        await using var b = await Sse.OpenAsync(mine);
        Assert.Equal(HttpStatusCode.OK, a.Response.StatusCode);
        Assert.Equal(HttpStatusCode.OK, b.Response.StatusCode);
        await using (var c = await Sse.OpenAsync(mine))
        {
            await ProblemAsync(c.Response, HttpStatusCode.TooManyRequests);
            Assert.True(c.Response.Headers.Contains("Retry-After"));
        }
        await using var d = await Sse.OpenAsync(other);
        Assert.Equal(HttpStatusCode.OK, d.Response.StatusCode);
        await using (var e = await Sse.OpenAsync(third))
            await ProblemAsync(e.Response, HttpStatusCode.ServiceUnavailable);

        var metrics = await MetricsAsync(app);
        Assert.Equal(3, Gauge(metrics, "asyncormapi_streams_open", "subscription"));
        Assert.Equal(3, Gauge(metrics, "asyncormapi_changefeed_subscribers"));

        // A subscriber that leaves frees its slot.
        await a.DisposeAsync();
        await EventuallyAsync("a freed subscription", async () => Gauge(await MetricsAsync(app), "asyncormapi_streams_open", "subscription") == 2);
        await using var f = await Sse.OpenAsync(third);
        Assert.Equal(HttpStatusCode.OK, f.Response.StatusCode);
    }

    [Fact]
    public async Task The_feed_window_is_bounded_in_bytes_and_an_event_is_its_rows_utf8_size()
    {
        await Api.SeedAsync();
        await using var app = Api.OnKestrel(("ChangeFeed:WindowBytes", "500000"), ("Writes:MaxDataBytes", "200000"));
        using var client = ApiFactory.ClientFrom(app, "127.0.0.1");
        await using var feed = await Sse.OpenAsync(client);

        // Non-ASCII and HTML-sensitive text goes out as itself, not as \uXXXX escapes.
        var data = string.Concat(Enumerable.Repeat("<é>&'", 20_000));           // 100,000 characters, 120,000 bytes
        var events = new List<SseEvent>();
        for (var i = 0; i < 6; i++)
        {
            Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = data + i })).StatusCode);
            events.Add(Assert.Single(await feed.TakeAsync(1)));
        }
        Assert.All(events, e => Assert.Equal("a.update", e.Type));
        Assert.Equal(data + "5", events[5].RowData);
        Assert.InRange(Encoding.UTF8.GetByteCount(events[5].Data), 120_000, 120_100);

        // Six events of 120 KB do not fit in 500 KB: the window holds the last four, and /metrics says so.
        var metrics = await MetricsAsync(app);
        Assert.InRange(Gauge(metrics, "asyncormapi_changefeed_window_bytes"), 480_000, 500_000);
        Assert.Equal(4, Gauge(metrics, "asyncormapi_changefeed_window_events"));
        await using (var old = await Sse.OpenAsync(client, events[0].Id))
            await ProblemAsync(old.Response, HttpStatusCode.Conflict);
        await using (var recent = await Sse.OpenAsync(client, events[2].Id))
            Assert.Equal([events[3].Id, events[4].Id, events[5].Id], (await recent.TakeAsync(3)).Select(e => e.Id));
    }

    [Fact]
    public async Task A_page_and_the_first_a_are_bounded_in_rows_with_has_more_for_the_bs()
    {
        // A with more Bs than a page holds (50,000 rows), then two small A.
        await Api.ExecuteAsync("""
            INSERT INTO a (data) VALUES ('many'), ('half'), ('half'), ('last');
            INSERT INTO b (a_id, data) SELECT 1, NULL FROM generate_series(1, 60000);
            INSERT INTO b (a_id, data) SELECT 2, NULL FROM generate_series(1, 30000);
            INSERT INTO b (a_id, data) SELECT 3, NULL FROM generate_series(1, 30000);
            INSERT INTO b (a_id, data) VALUES (4, 'x');
            """);

        var first = await Client.GetFromJsonAsync<ADto>("/a/first");
        Assert.Equal(50_000, first!.Bs.Count);
        Assert.True(first.BsHasMore);
        Assert.Equal(Enumerable.Range(1, 50_000), first.Bs.Select(b => b.Id));

        var page = await Client.GetAsync("/a");
        var one = await JsonArrayAsync(page);
        Assert.Equal(1, Assert.Single(one).Id);
        Assert.True(one[0].BsHasMore);
        Assert.Equal(50_000, one[0].Bs.Count);
        Assert.Equal("</a?after=1&limit=1000>; rel=\"next\"", page.Headers.GetValues("Link").Single());

        // 30,000 + 30,000 rows: the page ends with the last whole A, and the next page starts at the one left out.
        page = await Client.GetAsync("/a?after=1");
        var two = await JsonArrayAsync(page);
        Assert.Equal(2, Assert.Single(two).Id);
        Assert.Null(two[0].BsHasMore);
        Assert.Equal(30_000, two[0].Bs.Count);
        Assert.Equal("</a?after=2&limit=1000>; rel=\"next\"", page.Headers.GetValues("Link").Single());
        page = await Client.GetAsync("/a?after=2");
        Assert.Equal([3, 4], (await JsonArrayAsync(page)).Select(a => a.Id));
        Assert.False(page.Headers.Contains("Link"));
        Assert.DoesNotContain("bsHasMore", await Client.GetStringAsync("/a?after=2"));
    }

    [Fact]
    public async Task A_reset_behind_a_busy_table_answers_503_and_reads_never_queue_behind_it()
    {
        await Api.SeedAsync();
        await using var app = Api.With(("Reset:LockTimeoutSeconds", "2"));
        var client = app.CreateClient();
        // What an ingest holds on a and b until it commits.
        await using var ingest = new Npgsql.NpgsqlConnection(Api.ConnectionString);
        await ingest.OpenAsync();
        await using var tx = await ingest.BeginTransactionAsync();
        await new Npgsql.NpgsqlCommand("LOCK TABLE a, b IN ROW EXCLUSIVE MODE", ingest, tx).ExecuteNonQueryAsync();

        var reset = client.PostAsync("/reset", null);
        // While the reset tries, reads go on.
        for (var i = 0; i < 5 && !reset.IsCompleted; i++)
        {
            Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a/first")).StatusCode);
            Assert.Equal(3, (await client.GetFromJsonAsync<List<ADto>>("/a"))!.Count);
        }
        var busy = await reset;
        var problem = await ProblemAsync(busy, HttpStatusCode.ServiceUnavailable);
        Assert.Contains("busy", problem.GetProperty("title").GetString());
        Assert.True(busy.Headers.Contains("Retry-After"));
        Assert.Equal(3L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));

        await tx.RollbackAsync();
        Assert.Equal(HttpStatusCode.NoContent, (await client.PostAsync("/reset", null)).StatusCode);
        Assert.Equal(0L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    [Theory]
    [InlineData(0)]        // idle after the first lines
    [InlineData(100)]      // trickling 100 bytes a second
    public async Task A_stalled_ingest_is_cut_with_408_and_rolled_back(int bytesPerSecond)
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        await using var app = Api.OnKestrel(("Ingest:MinBytesPerSecond", "1000"), ("Ingest:StallSeconds", "1"));
        var address = ApiFactory.AddressOf(app);
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(address.Host, address.Port);
        var stream = tcp.GetStream();
        var lines = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 20_000).Select(i => $"{{\"data\": \"line {i}\"}}\n")));
        await stream.WriteAsync(Encoding.ASCII.GetBytes(
            $"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-ndjson\r\nContent-Length: {lines.Length * 10}\r\n\r\n"));
        await stream.WriteAsync(lines);

        using var trickle = new CancellationTokenSource();
        var trickling = Task.Run(async () =>
        {
            while (bytesPerSecond > 0 && !trickle.IsCancellationRequested)
            {
                await stream.WriteAsync(Encoding.ASCII.GetBytes(new string(' ', bytesPerSecond / 10)));
                await Task.Delay(100);
            }
        });
        var answer = new StreamReader(stream);
        var status = await answer.ReadLineAsync();
        await trickle.CancelAsync();
        await Task.WhenAny(trickling);
        Assert.Equal("HTTP/1.1 408 Request Timeout", status);
        var head = new List<string>();
        while (await answer.ReadLineAsync() is { Length: > 0 } header)
            head.Add(header);
        Assert.Contains("Content-Type: application/problem+json", head);
        Assert.Contains("Connection: close", head);

        await EventuallyAsync("no open transaction", async () => await Api.OpenTransactionsAsync() == 0);
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Theory]
    [InlineData("Origin", "http://evil.example")]
    [InlineData("Origin", "null")]
    [InlineData("Sec-Fetch-Site", "cross-site")]
    public async Task Admin_endpoints_refuse_cross_site_requests(string header, string value)
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        foreach (var path in new[] { "/reset", "/seed", "/a" })
        {
            var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent("{\"data\": \"x\"}\n") };
            request.Content.Headers.ContentType = new("application/x-ndjson");
            request.Headers.TryAddWithoutValidation(header, value);
            var problem = await ProblemAsync(await Client.SendAsync(request), HttpStatusCode.Forbidden);
            Assert.Contains("cross-site", problem.GetProperty("detail").GetString());
        }
        Assert.Equal(before, await Api.SnapshotAsync());

        // The server's own pages (Swagger UI's "Try it out") and clients that send no Origin go through.
        var own = new HttpRequestMessage(HttpMethod.Post, "/reset");
        own.Headers.TryAddWithoutValidation("Origin", Client.BaseAddress!.GetLeftPart(UriPartial.Authority));
        own.Headers.TryAddWithoutValidation("Sec-Fetch-Site", "same-origin");
        Assert.Equal(HttpStatusCode.NoContent, (await Client.SendAsync(own)).StatusCode);
    }

    [Fact]
    public async Task Development_answers_only_to_localhost_names()
    {
        foreach (var host in new[] { "localhost", "127.0.0.1", "[::1]" })
        {
            var request = new HttpRequestMessage(HttpMethod.Get, "/health/live");
            request.Headers.Host = $"{host}:8080";
            Assert.Equal(HttpStatusCode.OK, (await Client.SendAsync(request)).StatusCode);
        }
        var rebound = new HttpRequestMessage(HttpMethod.Get, "/a");
        rebound.Headers.Host = "rebind.evil.example";
        // A problem like every other 4xx, not the host filter's HTML page.
        var problem = await ProblemAsync(await Client.SendAsync(rebound), HttpStatusCode.BadRequest);
        Assert.Contains("rebind.evil.example", problem.GetProperty("detail").GetString());
    }

    [Fact]
    public async Task Retry_after_on_429_is_the_time_until_the_clients_window_resets()
    {
        await Api.SeedAsync();
        await using var app = Api.With(("RateLimit:WritesPerMinute", "2"));
        var client = app.CreateClient();
        // Not across a minute's end, where the budget comes back between the requests.
        var untilMinute = 60_000 - DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() % 60_000;
        if (untilMinute < 5_000)
            await Task.Delay(TimeSpan.FromMilliseconds(untilMinute + 100));
        for (var i = 0; i < 2; i++)
            Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = $"w{i}" })).StatusCode);
        var refused = await client.PatchAsJsonAsync("/a/first", new { data = "over" });
        var left = 60 - DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() % 60_000 / 1000.0;
        await ProblemAsync(refused, HttpStatusCode.TooManyRequests);
        var retryAfter = int.Parse(refused.Headers.GetValues("Retry-After").Single());
        Assert.InRange(retryAfter, Math.Max(1, (int)Math.Floor(left) - 1), (int)Math.Ceiling(left) + 1);
        Assert.Equal("w1", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
    }

    [Fact]
    public async Task On_sigterm_feeds_end_at_once_and_an_ingest_still_running_at_the_shutdown_timeout_is_rolled_back()
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        await using var process = await ApiProcess.StartAsync(Api.ConnectionString,
            ("Admin__ApiKey", "k"), ("Shutdown__TimeoutSeconds", "2"), ("Ingest__StallSeconds", "60"));
        using var client = new HttpClient { BaseAddress = process.Address };
        await using var feed = await Sse.OpenAsync(client);
        Assert.Equal(HttpStatusCode.OK, feed.Response.StatusCode);

        using var tcp = new TcpClient();
        await tcp.ConnectAsync(process.Address.Host, process.Address.Port);
        var stream = tcp.GetStream();
        var lines = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 20_000).Select(i => $"{{\"data\": \"line {i}\"}}\n")));
        await stream.WriteAsync(Encoding.ASCII.GetBytes("POST /a HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: k\r\n"
            + $"Content-Type: application/x-ndjson\r\nContent-Length: {lines.Length * 2}\r\n\r\n"));
        await stream.WriteAsync(lines);
        await EventuallyAsync("the ingest's transaction", async () => await Api.OpenTransactionsAsync() > 0);

        // What an orchestrator does. The process is gone within the shutdown timeout (StopAsync waits 20 s at most,
        // less than the 30 s default).
        await process.StopAsync();
        Assert.Empty(await feed.UntilEndAsync());
        Assert.True(feed.Ended, "the feed's stream ended");
        var answer = new byte[1024];
        var n = await stream.ReadAsync(answer).AsTask().ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : 0);
        Assert.DoesNotContain("201", Encoding.ASCII.GetString(answer, 0, n));
        Assert.Equal(before, await Api.SnapshotAsync());
    }
}
