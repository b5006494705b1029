using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry.Trace;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>Traces, metrics and logs an operator can use; rate limits and timeouts that protect the database.</summary>
public sealed class ObservabilityTests(ApiFactory api) : ApiTest(api)
{
    [Fact]
    public async Task Database_LogSql_echoes_every_statement_with_its_parameters_those_sent_on_npgsql_straight_too()
    {
        await Api.SeedAsync();
        var logs = new AdminGuardTests.LogCollector();
        // The tests' hosts log warnings only: the echo is on whatever the default level.
        await using var app = Api.WithWebHostBuilder(b => b.UseSetting("Database:LogSql", "true")
            .ConfigureServices(s => s.AddSingleton<Microsoft.Extensions.Logging.ILoggerProvider>(logs)));
        var client = app.CreateClient();
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a?after=1&limit=5")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a/stream")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "echoed" })).StatusCode);

        string text;
        lock (logs.Messages)
            text = string.Join("\n", logs.Messages.Select(m => m.Text));
        // The page and the stream (Npgsql straight), and EF Core's UPDATE, each with its values.
        Assert.Matches(@"FROM \(SELECT id, data, xmin FROM a WHERE id > \$1 ORDER BY id LIMIT \$2\)[^\n]*(\n[^\n]*)*?\n\s*Parameters: \[1, 6, 50001\]", text);
        Assert.Contains("FROM a LEFT JOIN b ON b.a_id = a.id AND b.a_id > $1", text);
        Assert.Matches(@"UPDATE a[\s\S]*?Parameters: \[echoed", text);
    }

    [Fact]
    public async Task A_read_is_a_server_span_with_a_child_span_per_sql_command_without_parameter_values()
    {
        var spans = new List<Activity>();
        // Spans are recorded when an OTLP endpoint is set (nothing listens on port 9: its exports fail, quietly); the
        // in-memory exporter beside it sees what the collector would.
        await using var app = Api.WithWebHostBuilder(b => b.UseSetting("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .ConfigureServices(s => s.ConfigureOpenTelemetryTracerProvider(t => t.AddInMemoryExporter(spans))));
        await Api.SeedAsync();
        Assert.Equal(HttpStatusCode.OK, (await app.CreateClient().GetAsync("/a?after=987654321&limit=3")).StatusCode);

        var server = await EventuallyAsync("the server span of GET /a", () => Task.FromResult(Snapshot(spans).FirstOrDefault(s =>
            s.Kind == ActivityKind.Server && s.GetTagItem("http.route") is "/a" or "/a/")));
        Assert.Equal(200, server.GetTagItem("http.response.status_code"));
        var commands = Snapshot(spans).Where(s => s.Source.Name == "Npgsql" && s.TraceId == server.TraceId).ToList();
        var query = Assert.Single(commands, c => c.Kind == ActivityKind.Client && Sql(c).Contains("LIMIT"));
        Assert.Equal(server.SpanId, query.ParentSpanId);
        Assert.Contains("FROM a", Sql(query));
        Assert.DoesNotContain("987654321", Sql(query));
    }

    [Fact]
    public async Task Metrics_hold_request_durations_by_route_and_npgsql_metrics()
    {
        await Api.SeedAsync();
        foreach (var path in new[] { "/a", "/a?limit=2", "/a/first", "/a/stream?after=1" })
            Assert.Equal(HttpStatusCode.OK, (await Client.GetAsync(path)).StatusCode);

        var response = await Client.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        var text = await response.Content.ReadAsStringAsync();
        var durations = text.Split('\n').Where(l => l.StartsWith("http_server_request_duration_seconds")).ToList();
        // The route as the docs and the OpenAPI document write it: /a, not the group's /a/.
        Assert.Contains(durations, l => l.Contains("http_route=\"/a\""));
        Assert.DoesNotContain(durations, l => l.Contains("http_route=\"/a/\""));
        Assert.Contains(durations, l => l.Contains("http_route=\"/a/stream\""));
        Assert.DoesNotContain(durations, l => l.Contains("limit=") || l.Contains("after="));
        Assert.Matches(new Regex("^db_client_\\w+", RegexOptions.Multiline), text);
        // The API's pool is labelled by its name, not by its connection string (the tests' own connections, in
        // this same process, are labelled by theirs).
        Assert.Contains("db_client_connection_pool_name=\"asyncormapi\"", text);
        Assert.DoesNotContain("/metrics", await Client.GetStringAsync("/swagger/v1/swagger.json"));
    }

    [Fact]
    public async Task Metrics_name_every_pool_and_no_label_holds_connection_details()
    {
        // A host of its own: the Prometheus exporter keeps a scrape for 300 ms, which another test here would read.
        await using var app = Api.With();
        var client = app.CreateClient();
        // The feed's reader: its setup queries, and its replication connection, which Npgsql builds itself.
        await using (var feed = await Sse.OpenAsync(client))
        {
            await Api.SeedAsync();
            await feed.TakeAsync(8);
            var metrics = await client.GetStringAsync("/metrics");
            foreach (var detail in new[] { "Host=", "Username=", "Password=", "Database=" })
                Assert.DoesNotContain(detail, metrics);
            foreach (var pool in new[] { "asyncormapi", "asyncormapi-changefeed", "asyncormapi-changefeed-replication" })
                Assert.Contains($"db_client_connection_pool_name=\"{pool}\"", metrics);
        }
    }

    [Fact]
    public async Task Production_logs_are_json_lines_with_trace_ids_a_line_per_request_and_no_secrets()
    {
        await using var process = await ApiProcess.StartAsync(Api.ConnectionString,
            ("Admin__ApiKey", "secret-value"), ("Logging__LogLevel__Default", "Information"));
        using var client = new HttpClient { BaseAddress = process.Address };
        client.DefaultRequestHeaders.Add("X-Api-Key", "secret-value");
        client.DefaultRequestHeaders.Add("Authorization", "Bearer bearer-secret");
        Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/seed", null)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a/first")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "body-secret" })).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a")).StatusCode);
        var line = new StringContent("{\"data\": \"x\"}\n");
        line.Headers.ContentType = new("application/x-ndjson");
        Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/a", line)).StatusCode);
        await process.StopAsync();

        var lines = process.Output.Where(l => l.Trim().Length > 0).ToList();
        var logs = lines.Select(l => JsonDocument.Parse(l).RootElement).ToList(); // every line is one JSON object
        Assert.All(lines, l => Assert.DoesNotContain("secret", l));
        var requests = logs.Where(l => l.GetProperty("Category").GetString()!.EndsWith("RequestLog")).ToList();
        Assert.Equal(["GET /health/live 200", "POST /seed 201", "GET /a/first 200", "PATCH /a/first 200", "GET /a 200", "POST /a 201"], requests.Select(r =>
            $"{r.GetProperty("State").GetProperty("Method")} {r.GetProperty("State").GetProperty("Route")} {r.GetProperty("State").GetProperty("Status")}"));
        var first = Assert.Single(requests, r => r.GetProperty("State").GetProperty("Route").GetString() == "/a/first"
            && r.GetProperty("State").GetProperty("Method").GetString() == "GET");
        Assert.Equal(200, first.GetProperty("State").GetProperty("Status").GetInt32());
        Assert.True(first.GetProperty("State").GetProperty("DurationMs").GetDouble() > 0);
        Assert.Equal("127.0.0.1", first.GetProperty("State").GetProperty("Client").GetString());
        Assert.Contains(first.GetProperty("Scopes").EnumerateArray(), s =>
            s.TryGetProperty("TraceId", out var id) && Regex.IsMatch(id.GetString()!, "^[0-9a-f]{32}$"));
    }

    [Fact]
    public async Task A_new_process_serves_a_page_and_both_streams_before_it_listens_and_neither_logs_nor_counts_them()
    {
        await Api.SeedAsync();
        // More than the half megabyte after which the warm-up cuts a stream.
        await Api.ExecuteAsync("INSERT INTO a (data) SELECT 'warm ' || g FROM generate_series(1, 20000) g");
        await using var process = await ApiProcess.StartAsync(Api.ConnectionString,
            ("Admin__ApiKey", "key"), ("Logging__LogLevel__Default", "Information"), ("Logging__LogLevel__AsyncOrmApi.Http.WarmStart", "Debug"));
        using var client = new HttpClient { BaseAddress = process.Address };
        var scrape = await client.GetStringAsync("/metrics");
        // Not requests of the API's: no duration under the routes it warmed, no transaction left open by a cut stream.
        Assert.DoesNotContain(scrape.Split('\n'), l => l.StartsWith("http_server_request_duration_seconds") && l.Contains("http_route=\"/a"));
        Assert.Equal(0L, await Api.OpenTransactionsAsync());
        Assert.Equal(1000, (await client.GetFromJsonAsync<JsonElement>("/a")).GetArrayLength());
        await process.StopAsync();

        var logs = process.Output.Where(l => l.Trim().Length > 0).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        var warmUps = logs.Where(l => l.GetProperty("Category").GetString() == "AsyncOrmApi.Http.WarmStart").ToList();
        // A page whole; a stream cut after its first half megabyte (499: the warm-up leaves as a client would).
        Assert.Equal(["/a?limit=1 application/json 200", "/a/stream application/x-ndjson 499", "/a/stream application/json 499"],
            warmUps.Select(l => l.GetProperty("State") is var s
                ? $"{s.GetProperty("Path")}{s.GetProperty("Query")} {s.GetProperty("Accept")} {s.GetProperty("Status")}" : ""));
        Assert.All(warmUps.Select(l => l.GetProperty("State").GetProperty("Bytes").GetInt64()).Skip(1), bytes => Assert.InRange(bytes, 512 * 1024, 1024 * 1024));
        var listening = logs.FindIndex(l => l.GetProperty("Message").GetString()!.StartsWith("Now listening on"));
        Assert.True(listening > logs.IndexOf(warmUps[^1]), "the warm-up comes before Kestrel listens");
        Assert.Equal(["GET /health/live 200", "GET /metrics 200", "GET /a 200"], logs
            .Where(l => l.GetProperty("Category").GetString()!.EndsWith("RequestLog"))
            .Select(r => $"{r.GetProperty("State").GetProperty("Method")} {r.GetProperty("State").GetProperty("Route")} {r.GetProperty("State").GetProperty("Status")}"));
        Assert.DoesNotContain(logs, l => l.GetProperty("LogLevel").GetString() is "Warning" or "Error" or "Critical");
    }

    [Fact]
    public async Task A_new_process_gives_back_the_stream_slots_its_warm_up_took()
    {
        await Api.SeedAsync();
        await using var process = await ApiProcess.StartAsync(Api.ConnectionString, ("Admin__ApiKey", "key"), ("Streams__Total", "2"));
        using var client = new HttpClient { BaseAddress = process.Address };

        // At rest nothing is open: every series of the gauge reads 0.
        var open = Regex.Matches(await client.GetStringAsync("/metrics"), @"^asyncormapi_streams_open\{[^}]*\} (\d+)", RegexOptions.Multiline);
        Assert.NotEmpty(open);
        Assert.All(open, m => Assert.Equal("0", m.Groups[1].Value));
        // Both slots of Streams:Total=2 are free for the first two real streams, held open together.
        using var first = await client.GetAsync("/a/stream", HttpCompletionOption.ResponseHeadersRead);
        using var second = await client.GetAsync("/a/stream", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal((HttpStatusCode.OK, HttpStatusCode.OK), (first.StatusCode, second.StatusCode));
    }

    [Fact]
    public async Task Over_the_write_budget_a_write_is_a_429_problem_and_does_not_happen()
    {
        await Api.SeedAsync();
        await using var app = Api.With(("RateLimit:WritesPerMinute", "2"));
        var client = app.CreateClient();
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "one" })).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "two" })).StatusCode);

        var limited = await client.PatchAsJsonAsync("/a/first", new { data = "three" });
        var problem = await ProblemAsync(limited, HttpStatusCode.TooManyRequests);
        Assert.InRange(int.Parse(limited.Headers.GetValues("Retry-After").Single()), 1, 60);
        Assert.Contains("nothing was done", problem.GetProperty("detail").GetString());
        Assert.Equal("two", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
        await ProblemAsync(await client.PostAsync("/seed", null), HttpStatusCode.TooManyRequests);
        Assert.Equal(3L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));

        // Reads have no budget unless one is set; probes and metrics never have one.
        for (var i = 0; i < 5; i++)
            Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a")).StatusCode);
        foreach (var path in new[] { "/health/live", "/health/ready", "/metrics" })
            Assert.Equal(HttpStatusCode.OK, (await client.GetAsync(path)).StatusCode);
    }

    [Fact]
    public async Task The_read_budget_covers_the_reads_of_a_and_never_probes_or_metrics()
    {
        await Api.SeedAsync();
        await using var app = Api.With(("RateLimit:ReadsPerMinute", "2"));
        var client = app.CreateClient();
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a/first")).StatusCode);
        // GET /a/first answers an A with all its Bs, as large as a page: it counts like GET /a (issue 16).
        foreach (var path in new[] { "/a", "/a/first", "/a/stream" })
            await ProblemAsync(await client.GetAsync(path), HttpStatusCode.TooManyRequests);
        foreach (var path in new[] { "/health/live", "/health/ready", "/metrics" })
            Assert.Equal(HttpStatusCode.OK, (await client.GetAsync(path)).StatusCode);
    }

    [Fact]
    public async Task A_request_held_past_its_timeout_is_a_504_and_its_query_is_cancelled()
    {
        await Api.SeedAsync();
        await using var app = Api.With(("Timeouts:RequestSeconds", "1"));
        var client = app.CreateClient();

        // The test holds the table, so GET /a waits in PostgreSQL for longer than its timeout.
        await using var holder = new Npgsql.NpgsqlConnection(Api.ConnectionString);
        await holder.OpenAsync();
        await using var tx = await holder.BeginTransactionAsync();
        await new Npgsql.NpgsqlCommand("LOCK TABLE a IN ACCESS EXCLUSIVE MODE", holder, tx).ExecuteNonQueryAsync();

        var problem = await ProblemAsync(await client.GetAsync("/a"), HttpStatusCode.GatewayTimeout);
        Assert.Contains("cancelled", problem.GetProperty("detail").GetString());
        await EventuallyAsync("no API query left running", async () => await Api.ScalarAsync<long>(
            // Queries only: a change feed's walsender, if one runs, is active too.
            $"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            + $"AND backend_type = 'client backend' AND pid NOT IN (pg_backend_pid(), {holder.ProcessID})") == 0);
        await tx.RollbackAsync();
    }

    static string Sql(Activity span) => ApiFactory.SqlOf(span) ?? "";

    // The exporter appends from the thread that ends a span; ToArray copies without the enumerator's version check.
    static Activity[] Snapshot(List<Activity> spans) => spans.ToArray();
}
