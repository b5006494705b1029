using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Npgsql;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>What a hostile or unlucky client meets: bad headers, odd text, exhausted ids, killed ingests, shared keys.</summary>
public sealed class HardeningTests(ApiFactory api) : ApiTest(api)
{
    [Theory]
    [InlineData("If-Match", "\"1\", *")]
    [InlineData("If-Match", "*, W/\"2\"")]
    [InlineData("If-Match", "1")]
    [InlineData("If-None-Match", "\"1\", *")]
    [InlineData("If-None-Match", "abc")]
    public async Task A_conditional_header_outside_RFC_9110_is_a_400_naming_it_and_nothing_changes(string header, string value)
    {
        await Api.SeedAsync();
        using var request = new HttpRequestMessage(header == "If-Match" ? HttpMethod.Patch : HttpMethod.Get, "/a/first");
        if (header == "If-Match")
            request.Content = JsonContent.Create(new { data = "changed" });
        request.Headers.TryAddWithoutValidation(header, value);
        var problem = await ProblemAsync(await Client.SendAsync(request), HttpStatusCode.BadRequest);
        Assert.True(problem.GetProperty("errors").TryGetProperty(header, out _));
        Assert.Equal("a1", await Api.ScalarAsync<string>("SELECT data FROM a WHERE id = 1"));
    }

    [Fact]
    public async Task Text_is_written_as_utf8_with_only_the_escapes_json_requires_on_every_wire()
    {
        const string text = "<‹😀 \"q\"";
        const string json = "\"<‹😀 \\\"q\\\"\"";
        await Api.SeedAsync();
        await using var feed = await Sse.OpenAsync(Client);
        using var patch = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = JsonContent.Create(new { data = text }) };
        patch.Headers.Add("Idempotency-Key", "escapes");
        Assert.Contains(json, await (await Client.SendAsync(patch)).Content.ReadAsStringAsync());
        using var replay = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = JsonContent.Create(new { data = text }) };
        replay.Headers.Add("Idempotency-Key", "escapes");
        Assert.Contains(json, await (await Client.SendAsync(replay)).Content.ReadAsStringAsync());
        Assert.Contains(json, await Client.GetStringAsync("/a"));
        Assert.Contains(json, await Client.GetStringAsync("/a/first"));
        Assert.Contains(json, await Client.GetStringAsync("/a/stream"));
        using var ndjson = new HttpRequestMessage(HttpMethod.Get, "/a/stream");
        ndjson.Headers.Accept.ParseAdd("application/x-ndjson");
        Assert.Contains(json, await (await Client.SendAsync(ndjson)).Content.ReadAsStringAsync());
        Assert.Contains(json, Assert.Single(await feed.TakeAsync(1)).Data);
    }

    [Fact]
    public async Task An_exhausted_id_sequence_is_a_409_that_says_so_never_a_500()
    {
        using var line = new StringContent("{\"id\": 2147483647, \"data\": \"last\"}\n", Encoding.UTF8, "application/x-ndjson");
        Assert.Equal(HttpStatusCode.Created, (await Client.PostAsync("/a", line)).StatusCode);
        var problem = await ProblemAsync(await Client.PostAsync("/seed", null), HttpStatusCode.Conflict);
        Assert.Contains("2,147,483,647", problem.GetProperty("detail").GetString());
        using var idless = new StringContent("{\"data\": \"next\"}\n", Encoding.UTF8, "application/x-ndjson");
        await ProblemAsync(await Client.PostAsync("/a", idless), HttpStatusCode.Conflict);
        Assert.Equal(1L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    [Fact]
    public async Task An_ingest_spool_is_unlinked_while_open_so_a_killed_process_leaves_no_file()
    {
        var temp = Directory.CreateTempSubdirectory("asyncormapi-spool-test-");
        // TMPDIR: the API's temporary folder, where an ingest spools its body.
        await using var process = await ApiProcess.StartAsync(Api.ConnectionString, ("Admin__ApiKey", "key"), ("TMPDIR", temp.FullName));
        using var socket = new System.Net.Sockets.TcpClient();
        await socket.ConnectAsync(process.Address.Host, process.Address.Port);
        var stream = socket.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes("POST /a HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: key\r\n"
            + "Content-Type: application/x-ndjson\r\nContent-Length: 100000000\r\n\r\n"));
        var lines = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 30_000).Select(i => $"{{\"data\": \"spool {i}\"}}\n")));
        await stream.WriteAsync(lines);
        await stream.FlushAsync();
        // Into empty tables the body is spooled: the file exists only as an open descriptor of the API's.
        await EventuallyAsync("the spool open", async () =>
        {
            await Task.Yield();
            return Directory.EnumerateFileSystemEntries($"/proc/{process.Id}/fd").Select(fd => new FileInfo(fd).LinkTarget ?? "")
                .Any(target => target.StartsWith(Path.Combine(temp.FullName, "asyncormapi-ingest-")));
        });
        // The runtime keeps its diagnostic pipes there too: only the spool is the API's.
        Assert.Empty(Directory.EnumerateFiles(temp.FullName, "asyncormapi-ingest-*"));
        process.Kill();
        Assert.Empty(Directory.EnumerateFiles(temp.FullName, "asyncormapi-ingest-*"));
        temp.Delete(true);
    }

    [Fact]
    public async Task Keys_belong_to_their_caller_so_no_client_can_take_another_ones_key()
    {
        await Api.SeedAsync();
        await using var app = Api.OnKestrel(("Admin:ApiKey", "admin-key"));
        using var anonymous = ApiFactory.ClientFrom(app, "127.0.0.11");
        using var other = ApiFactory.ClientFrom(app, "127.0.0.12");
        using var admin = ApiFactory.ClientFrom(app, "127.0.0.11");
        admin.DefaultRequestHeaders.Add("X-Api-Key", "admin-key");

        foreach (var (client, data) in new[] { (anonymous, "mine"), (other, "theirs") })
        {
            using var patch = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = JsonContent.Create(new { data }) };
            patch.Headers.Add("Idempotency-Key", "shared-key");
            using var answer = await client.SendAsync(patch);
            // Another address's use of the key is its own: a write, not a 422.
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
            Assert.False(answer.Headers.Contains("Idempotent-Replayed"));
        }
        using var reset = new HttpRequestMessage(HttpMethod.Post, "/reset");
        reset.Headers.Add("Idempotency-Key", "shared-key");
        Assert.Equal(HttpStatusCode.NoContent, (await admin.SendAsync(reset)).StatusCode);
        Assert.Equal(0L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
        Assert.Equal(3L, await Api.ScalarAsync<long>("SELECT count(*) FROM asyncormapi.idempotency_keys WHERE key = 'shared-key'"));
    }

    [Fact]
    public async Task A_write_that_committed_is_answered_as_done_and_a_503_or_504_wrote_nothing()
    {
        // A small pool and many writers at once on a fresh process: some wait too long for a connection.
        var settings = new NpgsqlConnectionStringBuilder(Api.ConnectionString) { MaxPoolSize = 3, Timeout = 2 };
        await using var process = await ApiProcess.StartAsync(settings.ConnectionString, ("Admin__ApiKey", "key"),
            ("RateLimit__WritesPerMinute", "0"), ("Timeouts__RequestSeconds", "3"));
        using var client = new HttpClient { BaseAddress = process.Address };
        client.DefaultRequestHeaders.Add("X-Api-Key", "key");
        var answers = await Task.WhenAll(Enumerable.Range(0, 120).Select(async _ =>
        {
            using var response = await client.PostAsync("/seed", null);
            return (int)response.StatusCode;
        }));
        Assert.All(answers, status => Assert.Contains(status, new[] { 201, 503, 504 }));
        Assert.Contains(201, answers);
        // Every committed seed (3 A) was answered 201; nothing else wrote.
        Assert.Equal(3L * answers.Count(s => s == 201), await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    [Fact]
    public async Task A_stream_holds_its_snapshot_no_longer_than_Streams_MaxSeconds_however_slow_its_client()
    {
        await Api.SeedAsync(100_000);
        await using var app = Api.OnKestrel(("Streams:MaxSeconds", "2"));
        using var socket = new System.Net.Sockets.TcpClient();
        var address = ApiFactory.AddressOf(app);
        await socket.ConnectAsync(address.Host, address.Port);
        // A client that asks and never reads: the stream waits on its socket, in its transaction.
        await socket.GetStream().WriteAsync(Encoding.ASCII.GetBytes("GET /a/stream HTTP/1.1\r\nHost: localhost\r\n\r\n"));
        await EventuallyAsync("the stream's transaction", async () => await Api.OpenTransactionsAsync() > 0);
        // Cut after 2 s: its transaction ends, and a reset (which waits for every reader of a and b) goes through.
        await EventuallyAsync("the stream cut", async () => await Api.OpenTransactionsAsync() == 0, seconds: 20);
        Assert.Equal(HttpStatusCode.NoContent, (await Client.PostAsync("/reset", null)).StatusCode);
    }

    [Fact]
    public async Task Writes_take_a_bounded_share_of_the_pool_per_client_and_in_total_before_their_bodies_are_read()
    {
        await Api.SeedAsync();
        await using var app = Api.OnKestrel(("Writes:PerClient", "2"), ("Writes:Total", "3"));
        var address = ApiFactory.AddressOf(app);
        // Writers that send their headers and then nothing of the 1 MiB body they announced: each holds its slot.
        var held = new List<System.Net.Sockets.TcpClient>();
        async Task HoldAsync(string from)
        {
            var socket = new System.Net.Sockets.TcpClient(new IPEndPoint(IPAddress.Parse(from), 0));
            await socket.ConnectAsync(address.Host, address.Port);
            await socket.GetStream().WriteAsync(Encoding.ASCII.GetBytes("PATCH /a/first HTTP/1.1\r\nHost: localhost\r\n"
                + "Content-Type: application/json\r\nContent-Length: 1048000\r\n\r\n{\"data\": \""));
            held.Add(socket);
        }
        try
        {
            using var metrics = ApiFactory.ClientFrom(app, "127.0.0.1");
            async Task HeldAsync(int count) => await EventuallyAsync($"{count} writes held", async () =>
                System.Text.RegularExpressions.Regex.IsMatch(await metrics.GetStringAsync("/metrics"),
                    $"^asyncormapi_streams_open{{[^}}]*kind=\"write\"[^}}]*}} {count}$", System.Text.RegularExpressions.RegexOptions.Multiline));
            await HoldAsync("127.0.0.21");
            await HoldAsync("127.0.0.21");
            await HeldAsync(2);
            using var same = ApiFactory.ClientFrom(app, "127.0.0.21");
            Assert.Equal(HttpStatusCode.TooManyRequests, await PatchStatusAsync(same, "third"));
            await HoldAsync("127.0.0.22");
            await HeldAsync(3);
            using var other = ApiFactory.ClientFrom(app, "127.0.0.23");
            var refused = await other.PatchAsJsonAsync("/a/first", new { data = "fifth" });
            await ProblemAsync(refused, HttpStatusCode.ServiceUnavailable);
            Assert.True(refused.Headers.RetryAfter is not null);
            // Reads go on, on the pool the writers do not hold.
            Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("/a/first")).StatusCode);
            Assert.Equal("a1", await Api.ScalarAsync<string>("SELECT data FROM a WHERE id = 1"));
        }
        finally
        {
            held.ForEach(s => s.Dispose());
        }
        using var after = ApiFactory.ClientFrom(app, "127.0.0.23");
        await EventuallyAsync("the slots given back", async () => await PatchStatusAsync(after, "after") == HttpStatusCode.OK);
    }

    static async Task<HttpStatusCode> PatchStatusAsync(HttpClient client, string data)
    {
        using var response = await client.PatchAsJsonAsync("/a/first", new { data });
        await response.Content.ReadAsStringAsync();
        return response.StatusCode;
    }

    [Fact]
    public async Task A_client_without_the_admin_key_writes_at_most_its_bytes_a_minute_refused_before_any_work()
    {
        await Api.SeedAsync();
        await using var app = Api.WithWebHostBuilder(b => b.UseEnvironment("Production").UseSetting("Admin:ApiKey", "key")
            .UseSetting("RateLimit:WriteBytesPerMinute", "5000").UseSetting("RateLimit:WritesPerMinute", "0"));
        var client = app.CreateClient();
        // Not across a minute's end, where the budget comes back between the requests.
        var untilMinute = 60_000 - DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() % 60_000;
        if (untilMinute < 5_000)
            await Task.Delay(TimeSpan.FromMilliseconds(untilMinute + 100));
        var data = new string('x', 2000);
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "1" + data })).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "2" + data })).StatusCode);
        var refused = await client.PatchAsJsonAsync("/a/first", new { data = "3" + data });
        var problem = await ProblemAsync(refused, HttpStatusCode.TooManyRequests);
        Assert.Contains("RateLimit:WriteBytesPerMinute", problem.GetProperty("detail").GetString());
        Assert.InRange(refused.Headers.RetryAfter!.Delta!.Value.TotalSeconds, 1, 60);
        Assert.StartsWith("2", await Api.ScalarAsync<string>("SELECT data FROM a WHERE id = 1"));
        // The admin key's holder is not charged.
        client.DefaultRequestHeaders.Add("X-Api-Key", "key");
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "4" + data })).StatusCode);
    }

    [Fact]
    public async Task Data_longer_than_Writes_MaxDataBytes_is_a_400_naming_it()
    {
        await Api.SeedAsync();
        await using var app = Api.With(("Writes:MaxDataBytes", "8"));
        var client = app.CreateClient();
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "new data" })).StatusCode);
        var problem = await ProblemAsync(await client.PatchAsJsonAsync("/a/first", new { data = "é new data" }), HttpStatusCode.BadRequest);
        Assert.Contains("Writes:MaxDataBytes", problem.GetProperty("errors").GetProperty("data")[0].GetString());
        Assert.Equal("new data", await Api.ScalarAsync<string>("SELECT data FROM a WHERE id = 1"));
    }

    [Fact]
    public async Task Resumes_the_feed_cannot_serve_are_refused_without_a_session_each()
    {
        await Api.SeedAsync();
        var sessions = await SessionsAsync();
        for (var i = 0; i < 30; i++)
        {
            using var response = await Client.GetAsync("/a/changes?after=ffffffff-7FFFFFFFFFFFFFFF-1");
            Assert.Equal(HttpStatusCode.Conflict, response.StatusCode);
        }
        for (var i = 0; i < 30; i++)
        {
            // Of this database, but beyond its WAL.
            var position = Assert.Single((await Client.GetAsync("/a/first")).Headers.GetValues("Change-Position"));
            using var response = await Client.GetAsync($"/a/changes?after={position[..9]}7FFFFFFFFFFFFFFF-1");
            Assert.Equal(HttpStatusCode.Conflict, response.StatusCode);
        }
        Assert.InRange(await SessionsAsync() - sessions, 0, 6);
    }

    async Task<long> SessionsAsync()
    {
        await using var connection = new NpgsqlConnection(Api.ConnectionString);
        await connection.OpenAsync();
        await new NpgsqlCommand("SELECT pg_stat_clear_snapshot()", connection).ExecuteNonQueryAsync();
        await Task.Delay(1100);  // backends publish their counters at most once a second
        return (long)(await new NpgsqlCommand("SELECT sessions FROM pg_stat_database WHERE datname = current_database()", connection)
            .ExecuteScalarAsync())!;
    }
}
