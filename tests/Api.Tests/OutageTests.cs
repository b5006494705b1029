using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>PostgreSQL stops under the running API and comes back.</summary>
public sealed class OutageTests(ApiFactory api) : ApiTest(api)
{
    [Fact]
    public async Task A_change_feed_cut_by_an_outage_ends_and_its_resume_answers_409_never_a_silent_gap()
    {
        string last;
        await using (var feed = await Sse.OpenAsync(Client))
        {
            await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('before')");
            last = (await feed.TakeAsync(1))[0].Id!;
            await Api.StopDatabaseAsync();
            try
            {
                Assert.Empty(await feed.UntilEndAsync());      // the slot went with the server: the stream ends
                var problem = await ProblemAsync(await Client.GetAsync("/a/changes"), HttpStatusCode.ServiceUnavailable);
                Assert.Equal(TimeSpan.FromSeconds(5), (await Client.GetAsync("/a/changes")).Headers.RetryAfter?.Delta);
                Assert.DoesNotContain("Exception", problem.GetProperty("detail").GetString());
            }
            finally
            {
                await Api.StartDatabaseAsync();
            }
        }
        // Back by itself (the first requests may meet pooled connections the restart cut, which clears them).
        await EventuallyAsync("the API ready again", async () => (await Client.GetAsync("/health/ready")).StatusCode == HttpStatusCode.OK);
        // Written while no slot existed: a resume from before cannot know it, so it must not pretend to.
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('while no slot')");
        var resumed = await Client.SendAsync(new HttpRequestMessage(HttpMethod.Get, "/a/changes") { Headers = { { "Last-Event-ID", last } } });
        Assert.StartsWith("must-refetch", (await ProblemAsync(resumed, HttpStatusCode.Conflict)).GetProperty("detail").GetString());

        await using var fresh = await Sse.OpenAsync(Client);
        await Api.ExecuteAsync("INSERT INTO a (data) VALUES ('after')");
        Assert.Equal("after", (await fresh.TakeAsync(1))[0].RowData);
    }

    [Fact]
    public async Task While_the_database_is_down_requests_get_503_and_afterwards_everything_is_back()
    {
        await Api.SeedAsync();
        Assert.Equal(HttpStatusCode.OK, (await Client.PatchAsJsonAsync("/a/first", new { data = "kept" })).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await Client.GetAsync("/health/ready")).StatusCode);

        // Bounded: an outage must be answered, not waited out.
        using var client = Api.CreateClient();
        client.Timeout = TimeSpan.FromSeconds(30);
        await Api.StopDatabaseAsync();
        try
        {
            foreach (var request in new Func<Task<HttpResponseMessage>>[]
            {
                () => client.GetAsync("/a"),
                () => client.GetAsync("/a/first"),
                () => client.GetAsync("/a/stream"),
                () => client.PatchAsJsonAsync("/a/first", new { data = "lost" }),
                () => client.PostAsync("/seed", null),
                () => client.PostAsync("/reset", null),
                () => client.GetAsync("/health/ready"),
            })
            {
                var response = await request();
                var problem = await ProblemAsync(response, HttpStatusCode.ServiceUnavailable);
                Assert.Equal(TimeSpan.FromSeconds(5), response.Headers.RetryAfter?.Delta);
                Assert.DoesNotContain("Exception", problem.GetProperty("detail").GetString());
            }
            Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/health/live")).StatusCode);
        }
        finally
        {
            await Api.StartDatabaseAsync();
        }

        // Back by itself: the first requests may still meet connections the restart cut.
        await EventuallyAsync("the API ready again", async () => (await client.GetAsync("/health/ready")).StatusCode == HttpStatusCode.OK);
        Equivalent(SeedGraph(firstData: "kept"), await JsonArrayAsync(await client.GetAsync("/a")));
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a/first")).StatusCode);
    }

    [Fact]
    public async Task A_stream_cut_by_the_outage_fails_instead_of_ending_cleanly()
    {
        // Big enough that the rows cannot all sit in socket buffers when the database stops.
        await Api.SeedAsync(60_000);
        using var client = Api.CreateClient();
        using var response = await client.GetAsync("/a/stream", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        await using var body = await response.Content.ReadAsStreamAsync();
        var start = new byte[4096];
        await body.ReadExactlyAsync(start);
        Assert.Equal((byte)'[', start[0]);

        await Api.StopDatabaseAsync();
        try
        {
            await Assert.ThrowsAnyAsync<IOException>(() => body.CopyToAsync(Stream.Null));
        }
        finally
        {
            await Api.StartDatabaseAsync();
        }
    }

    [Fact]
    public async Task Shutting_down_lets_an_in_flight_stream_finish()
    {
        await Api.SeedAsync(20_000);
        await using var app = Api.OnKestrel();
        using var client = new HttpClient { BaseAddress = ApiFactory.AddressOf(app) };
        using var response = await client.GetAsync("/a/stream", HttpCompletionOption.ResponseHeadersRead);
        await using var body = await response.Content.ReadAsStreamAsync();
        var start = new byte[4096];
        await body.ReadExactlyAsync(start);

        // What SIGTERM does through the host's console lifetime.
        app.Services.GetRequiredService<IHostApplicationLifetime>().StopApplication();

        var rest = new MemoryStream();
        await body.CopyToAsync(rest);
        var all = JsonSerializer.Deserialize<List<ADto>>([.. start, .. rest.ToArray()], Json)!;
        Assert.Equal(60_000, all.Count);
        Assert.Equal(all.Count, all.Select(a => a.Id).Distinct().Count());
    }

    [Fact]
    public async Task A_client_that_leaves_mid_stream_stops_the_query()
    {
        // Far more than socket and driver buffers hold, so that the stream is still reading when its client leaves.
        await Api.SeedAsync(250_000);
        const string Rollbacks = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()";
        var rollbacksBefore = await Api.ScalarAsync<long>(Rollbacks);

        using (var client = Api.CreateClient())
        using (var response = await client.GetAsync("/a/stream", HttpCompletionOption.ResponseHeadersRead))
        await using (var body = await response.Content.ReadAsStreamAsync())
            await body.ReadExactlyAsync(new byte[4096]);

        // The stream's transaction rolls back: its batches are not read to the end. PostgreSQL publishes an
        // idle backend's counters up to ten seconds late, hence the generous bound.
        await EventuallyAsync("the stream's query cancelled on the server", async () =>
            await Api.ScalarAsync<long>("""
                SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND state = 'active' AND query LIKE '%LEFT JOIN b%' AND pid <> pg_backend_pid()
                """) == 0
            && await Api.ScalarAsync<long>(Rollbacks) > rollbacksBefore, seconds: 30);
    }
}
