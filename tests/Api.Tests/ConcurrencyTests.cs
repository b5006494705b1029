using System.Net;
using System.Net.Http.Json;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>ETags from the row version; If-Match makes PATCH /a/first a compare-and-set.</summary>
public sealed class ConcurrencyTests(ApiFactory api) : ApiTest(api)
{
    async Task<string> ETagAsync()
    {
        var response = await Client.GetAsync("/a/first");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var etag = response.Headers.ETag!;
        Assert.False(etag.IsWeak);
        return etag.Tag;
    }

    Task<HttpResponseMessage> PatchAsync(string data, string? ifMatch)
    {
        var request = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = JsonContent.Create(new { data }) };
        if (ifMatch is not null)
            request.Headers.TryAddWithoutValidation("If-Match", ifMatch);
        return Client.SendAsync(request);
    }

    [Fact]
    public async Task Get_first_sends_the_row_version_as_a_strong_etag_and_304s_on_it()
    {
        await Api.SeedAsync();
        var etag = await ETagAsync();
        Assert.Equal($"\"{await Api.ScalarAsync<string>("SELECT xmin::text FROM a ORDER BY id LIMIT 1")}\"", etag);

        var conditional = new HttpRequestMessage(HttpMethod.Get, "/a/first");
        conditional.Headers.TryAddWithoutValidation("If-None-Match", etag);
        var notModified = await Client.SendAsync(conditional);
        Assert.Equal(HttpStatusCode.NotModified, notModified.StatusCode);
        Assert.Equal(etag, notModified.Headers.ETag?.Tag);
        Assert.Empty(await notModified.Content.ReadAsByteArrayAsync());

        var other = new HttpRequestMessage(HttpMethod.Get, "/a/first");
        other.Headers.TryAddWithoutValidation("If-None-Match", "\"1\"");
        Assert.Equal(HttpStatusCode.OK, (await Client.SendAsync(other)).StatusCode);
    }

    [Fact]
    public async Task Patch_with_the_current_etag_updates_and_answers_the_new_one()
    {
        await Api.SeedAsync();
        var etag = await ETagAsync();
        var patch = await PatchAsync("new data", etag);
        Assert.Equal(HttpStatusCode.OK, patch.StatusCode);
        var newTag = patch.Headers.ETag!.Tag;
        Assert.NotEqual(etag, newTag);
        Assert.Equal(newTag, await ETagAsync());
        Assert.Equal("new data", (await patch.Content.ReadFromJsonAsync<ADto>())!.Data);
    }

    [Theory]
    [InlineData("\"stale-etag\"")]
    [InlineData("\"12345\"")]
    [InlineData("W/\"{current}\"")]
    // A header that is no entity tag at all is a 400 (HardeningTests).
    public async Task Patch_with_any_other_etag_is_412_and_changes_nothing(string ifMatch)
    {
        await Api.SeedAsync();
        var current = await ETagAsync();
        var before = await Api.SnapshotAsync();

        var problem = await ProblemAsync(await PatchAsync("lost", ifMatch.Replace("\"{current}\"", current)), HttpStatusCode.PreconditionFailed);
        Assert.Contains("If-Match", problem.GetProperty("detail").GetString());
        Assert.Equal(before, await Api.SnapshotAsync());
        Assert.Equal(current, await ETagAsync());
    }

    [Fact]
    public async Task Patch_with_a_list_or_a_star_matches_the_current_version()
    {
        await Api.SeedAsync();
        Assert.Equal(HttpStatusCode.OK, (await PatchAsync("listed", $"\"1\", {await ETagAsync()}")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await PatchAsync("starred", "*")).StatusCode);
        Assert.Equal("starred", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
    }

    [Fact]
    public async Task Patch_without_if_match_is_last_write_wins()
    {
        await Api.SeedAsync();
        await Api.ExecuteAsync("UPDATE a SET data = 'changed elsewhere' WHERE id = 1");
        Assert.Equal(HttpStatusCode.OK, (await PatchAsync("mine", null)).StatusCode);
        Assert.Equal("mine", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
    }

    [Fact]
    public async Task Concurrent_read_modify_writes_lose_no_update()
    {
        await Api.SeedAsync();
        Assert.Equal(HttpStatusCode.OK, (await PatchAsync("0", null)).StatusCode);
        const int clients = 24;

        async Task IncrementAsync()
        {
            using var client = Api.CreateClient();
            for (var attempt = 0; attempt < 500; attempt++)
            {
                var get = await client.GetAsync("/a/first");
                var current = int.Parse((await get.Content.ReadFromJsonAsync<ADto>())!.Data!);
                var request = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = JsonContent.Create(new { data = $"{current + 1}" }) };
                request.Headers.IfMatch.Add(get.Headers.ETag!);
                var patch = await client.SendAsync(request);
                if (patch.StatusCode == HttpStatusCode.OK)
                    return;
                Assert.Equal(HttpStatusCode.PreconditionFailed, patch.StatusCode);
            }
            Assert.Fail("gave up after 500 conflicts");
        }

        await Task.WhenAll(Enumerable.Range(0, clients).Select(_ => Task.Run(IncrementAsync)));
        Assert.Equal($"{clients}", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
    }
}
