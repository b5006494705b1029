using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>Idempotency-Key on every write: a retry replays the stored answer and writes nothing.</summary>
public sealed class IdempotencyTests(ApiFactory api) : ApiTest(api)
{
    static string NewKey() => Guid.NewGuid().ToString();

    static HttpRequestMessage Write(HttpMethod method, string path, string? key, HttpContent? body = null, string? ifMatch = null)
    {
        var request = new HttpRequestMessage(method, path) { Content = body };
        if (key is not null)
            request.Headers.TryAddWithoutValidation("Idempotency-Key", key);
        if (ifMatch is not null)
            request.Headers.TryAddWithoutValidation("If-Match", ifMatch);
        return request;
    }

    static HttpContent NdJson(string lines)
    {
        var content = new StringContent(lines);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-ndjson");
        return content;
    }

    static bool Replayed(HttpResponseMessage response) =>
        response.Headers.TryGetValues("Idempotent-Replayed", out var values) && values.Single() == "true";

    Task<string> CountsAsync() => Api.ScalarAsync<string>("SELECT (SELECT count(*) FROM a) || ' ' || (SELECT count(*) FROM b)");

    [Fact]
    public async Task A_retry_gets_the_first_answer_byte_for_byte_and_writes_nothing()
    {
        var key = NewKey();
        var first = await Client.SendAsync(Write(HttpMethod.Post, "/seed", key));
        Assert.Equal(HttpStatusCode.Created, first.StatusCode);
        Assert.False(Replayed(first));
        var body = await first.Content.ReadAsByteArrayAsync();
        var versions = await Api.VersionsAsync();

        // The bare form and the draft's quoted string are the same key.
        foreach (var sent in new[] { key, $"\"{key}\"" })
        {
            var retry = await Client.SendAsync(Write(HttpMethod.Post, "/seed", sent));
            Assert.Equal(HttpStatusCode.Created, retry.StatusCode);
            Assert.True(Replayed(retry));
            Assert.Equal(body, await retry.Content.ReadAsByteArrayAsync());
            Assert.Equal(first.Headers.Location, retry.Headers.Location);
            Assert.Equal(first.Content.Headers.ContentType, retry.Content.Headers.ContentType);
            // A current Consistency-Token: at or after the first answer's.
            var then = NpgsqlTypes.NpgsqlLogSequenceNumber.Parse(first.Headers.GetValues("Consistency-Token").Single());
            Assert.True(NpgsqlTypes.NpgsqlLogSequenceNumber.Parse(retry.Headers.GetValues("Consistency-Token").Single()) >= then);
        }
        Assert.Equal("3 5", await CountsAsync());
        Assert.Equal(versions, await Api.VersionsAsync());
        Assert.Equal(1L, await Api.ScalarAsync<long>($"SELECT count(*) FROM asyncormapi.idempotency_keys WHERE key = '{key}'"));

        // Without a key every write runs.
        (await Client.PostAsync("/seed", null)).EnsureSuccessStatusCode();
        Assert.Equal("6 10", await CountsAsync());
    }

    [Fact]
    public async Task A_replayed_patch_answers_its_200_not_a_412_and_another_if_match_is_422()
    {
        await Api.SeedAsync();
        var etag = (await Client.GetAsync("/a/first")).Headers.ETag!.Tag;
        var key = NewKey();
        var first = await Client.SendAsync(Write(HttpMethod.Patch, "/a/first", key, JsonContent.Create(new { data = "once" }), etag));
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        var versions = await Api.VersionsAsync();

        var retry = await Client.SendAsync(Write(HttpMethod.Patch, "/a/first", key, JsonContent.Create(new { data = "once" }), etag));
        Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        Assert.True(Replayed(retry));
        Assert.Equal(first.Headers.ETag, retry.Headers.ETag);
        Assert.Equal(await first.Content.ReadAsStringAsync(), await retry.Content.ReadAsStringAsync());
        Assert.Equal(versions, await Api.VersionsAsync());

        var other = await Client.SendAsync(Write(HttpMethod.Patch, "/a/first", key, JsonContent.Create(new { data = "once" }), first.Headers.ETag!.Tag));
        var problem = await ProblemAsync(other, HttpStatusCode.UnprocessableEntity);
        Assert.Contains("Idempotency-Key", problem.GetProperty("detail").GetString());
        Assert.Equal(versions, await Api.VersionsAsync());
    }

    [Fact]
    public async Task The_same_key_on_another_body_query_or_endpoint_is_422_and_does_nothing()
    {
        var key = NewKey();
        var first = await Client.SendAsync(Write(HttpMethod.Post, "/a", key, NdJson("{\"data\": \"x\", \"bs\": [{\"data\": null}]}\n")));
        Assert.Equal(HttpStatusCode.Created, first.StatusCode);
        var snapshot = await Api.SnapshotAsync();

        foreach (var other in new[]
                 {
                     Write(HttpMethod.Post, "/a", key, NdJson("{\"data\": \"y\", \"bs\": [{\"data\": null}]}\n")),
                     Write(HttpMethod.Post, "/a?x=1", key, NdJson("{\"data\": \"x\", \"bs\": [{\"data\": null}]}\n")),
                     Write(HttpMethod.Post, "/seed", key),
                     Write(HttpMethod.Post, "/reset", key),
                 })
            await ProblemAsync(await Client.SendAsync(other), HttpStatusCode.UnprocessableEntity);
        Assert.Equal(snapshot, await Api.SnapshotAsync());

        var retry = await Client.SendAsync(Write(HttpMethod.Post, "/a", key, NdJson("{\"data\": \"x\", \"bs\": [{\"data\": null}]}\n")));
        Assert.True(Replayed(retry));
        Assert.Equal(await first.Content.ReadAsStringAsync(), await retry.Content.ReadAsStringAsync());
        Assert.Equal(snapshot, await Api.SnapshotAsync());
    }

    [Fact]
    public async Task A_failed_attempt_stores_nothing_so_its_retry_runs_anew()
    {
        var key = NewKey();
        await ProblemAsync(await Client.SendAsync(Write(HttpMethod.Post, "/a", key, NdJson("{\"data\": \"ok\"}\n{\"data\": 5}\n"))),
            HttpStatusCode.BadRequest);
        var fixedBody = await Client.SendAsync(Write(HttpMethod.Post, "/a", key, NdJson("{\"data\": \"fixed\"}\n")));
        Assert.Equal(HttpStatusCode.Created, fixedBody.StatusCode);
        Assert.False(Replayed(fixedBody));

        var patchKey = NewKey();
        await ProblemAsync(await Client.SendAsync(Write(HttpMethod.Patch, "/a/first", patchKey, JsonContent.Create(new { data = "z" }), "\"1\"")),
            HttpStatusCode.PreconditionFailed);
        var etag = (await Client.GetAsync("/a/first")).Headers.ETag!.Tag;
        var patched = await Client.SendAsync(Write(HttpMethod.Patch, "/a/first", patchKey, JsonContent.Create(new { data = "z" }), etag));
        Assert.Equal(HttpStatusCode.OK, patched.StatusCode);
        Assert.False(Replayed(patched));
        Assert.Equal("z", await Api.ScalarAsync<string>("SELECT data FROM a"));
        Assert.Equal(2L, await Api.ScalarAsync<long>($"SELECT count(*) FROM asyncormapi.idempotency_keys WHERE key IN ('{key}', '{patchKey}')"));
    }

    [Theory]
    [InlineData("")]
    [InlineData("a\tb")]
    [InlineData("\"unterminated")]
    [InlineData("\"a\"b\"")]
    public async Task A_malformed_key_is_a_400_naming_the_header(string key)
    {
        var problem = await ProblemAsync(await Client.SendAsync(Write(HttpMethod.Post, "/seed", key)), HttpStatusCode.BadRequest);
        Assert.True(problem.GetProperty("errors").TryGetProperty("Idempotency-Key", out _));
        Assert.Contains("255", problem.GetProperty("detail").GetString());
        Assert.Equal("0 0", await CountsAsync());
        await ProblemAsync(await Client.SendAsync(Write(HttpMethod.Post, "/seed", new string('k', 256))), HttpStatusCode.BadRequest);
    }

    [Fact]
    public async Task A_second_request_while_the_first_still_sends_its_body_is_409_at_once()
    {
        var key = NewKey();
        var address = Client.BaseAddress!;
        using var slow = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await slow.ConnectAsync(address.Host, address.Port);
        var line = "{\"data\": \"slow\"}\n";
        await slow.SendAsync(Encoding.ASCII.GetBytes($"POST /a HTTP/1.1\r\nHost: localhost\r\nIdempotency-Key: {key}\r\n"
            + $"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n{line.Length:x}\r\n{line}\r\n"));
        // The first holds its key from when its transaction opens.
        await EventuallyAsync("the slow ingest's transaction", async () => await Api.OpenTransactionsAsync() == 1);
        var busy = await Client.SendAsync(Write(HttpMethod.Post, "/a", key, NdJson(line)));
        await ProblemAsync(busy, HttpStatusCode.Conflict);
        Assert.True(int.Parse(busy.Headers.GetValues("Retry-After").Single()) >= 1);
        Assert.Equal("0 0", await CountsAsync());

        await slow.SendAsync("0\r\n\r\n"u8.ToArray());
        var answer = new byte[4096];
        Assert.Contains(" 201 ", Encoding.ASCII.GetString(answer, 0, await slow.ReceiveAsync(answer)));
        var retry = await Client.SendAsync(Write(HttpMethod.Post, "/a", key, NdJson(line)));
        Assert.Equal(HttpStatusCode.Created, retry.StatusCode);
        Assert.True(Replayed(retry));
        Assert.Equal("1 0", await CountsAsync());
    }

    [Fact]
    public async Task A_replayed_reset_keeps_the_rows_written_after_it()
    {
        var key = NewKey();
        Assert.Equal(HttpStatusCode.NoContent, (await Client.SendAsync(Write(HttpMethod.Post, "/reset", key))).StatusCode);
        await Api.SeedAsync();
        var retry = await Client.SendAsync(Write(HttpMethod.Post, "/reset", key));
        Assert.Equal(HttpStatusCode.NoContent, retry.StatusCode);
        Assert.True(Replayed(retry));
        Assert.Equal("3 5", await CountsAsync());
    }

    [Fact]
    public async Task The_admin_key_is_checked_before_a_replay()
    {
        const string adminKey = "idempotency-admin-key";
        await using var app = Api.WithWebHostBuilder(b => b.UseEnvironment("Staging").UseSetting("Admin:ApiKey", adminKey));
        var client = app.CreateClient();
        var key = NewKey();
        var first = Write(HttpMethod.Post, "/seed", key);
        first.Headers.Add("X-Api-Key", adminKey);
        Assert.Equal(HttpStatusCode.Created, (await client.SendAsync(first)).StatusCode);

        var anonymous = await client.SendAsync(Write(HttpMethod.Post, "/seed", key));
        await ProblemAsync(anonymous, HttpStatusCode.Unauthorized);
        Assert.False(Replayed(anonymous));
        Assert.DoesNotContain("\"a\":", await anonymous.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Keys_outlive_the_process_and_expire_after_the_retention()
    {
        var key = NewKey();
        await using (var before = Api.With(("Idempotency:Retention", "00:00:01")))
            Assert.Equal(HttpStatusCode.Created, (await before.CreateClient().SendAsync(Write(HttpMethod.Post, "/seed", key))).StatusCode);

        // Another API process on the same database: the key is in PostgreSQL, not in the process that stored it.
        await using (var after = Api.With(("Idempotency:Retention", "01:00:00")))
        {
            var retry = await after.CreateClient().SendAsync(Write(HttpMethod.Post, "/seed", key));
            Assert.True(Replayed(retry));
            Assert.Equal("3 5", await CountsAsync());
        }

        await using var expiring = Api.With(("Idempotency:Retention", "00:00:01"));
        var again = await EventuallyAsync("the key to expire", async () =>
        {
            var response = await expiring.CreateClient().SendAsync(Write(HttpMethod.Post, "/seed", key));
            return Replayed(response) ? null : response;
        });
        Assert.Equal(HttpStatusCode.Created, again.StatusCode);
        Assert.Equal("6 10", await CountsAsync());
        // And the expired rows are deleted in the background.
        await EventuallyAsync("expired keys to be deleted", async () =>
            await Api.ScalarAsync<long>("SELECT count(*) FROM asyncormapi.idempotency_keys WHERE created_at < now() - interval '1 second'") == 0);
    }

    [Fact]
    public async Task Keys_live_in_a_schema_of_their_own_and_public_keeps_the_seeds_tables()
    {
        await Client.SendAsync(Write(HttpMethod.Post, "/seed", NewKey()));
        Assert.Equal("a,b", await Api.ScalarAsync<string>(
            "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'"));
        Assert.Equal("idempotency_keys", await Api.ScalarAsync<string>(
            "SELECT string_agg(table_name, ',') FROM information_schema.tables WHERE table_schema = 'asyncormapi'"));
    }
}
