using System.Net;
using System.Net.Http.Json;
using System.Text;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>Bad requests: a clear problem+json 4xx, never a 5xx, and the database as it was.</summary>
public sealed class ErrorTests(ApiFactory api) : ApiTest(api)
{
    // One Production host for every row of the theories, not one each (44 hosts before); the collection's factory
    // disposes it with itself.
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ApiFactory, WebApplicationFactory<Program>> Productions = new();

    WebApplicationFactory<Program> Production => Productions.GetValue(Api, api =>
        api.WithWebHostBuilder(b => b.UseEnvironment("Production").UseSetting("Admin:ApiKey", "k")));

    public static TheoryData<string, string, string?, string?, int, string> BadRequests => new()
    {
        // method, path, content type, body, status, a word the detail must hold
        { "PATCH", "/a/first", "application/json", "{not json", 400, "JSON" },
        { "PATCH", "/a/first", "application/json", """{"data": "trunc""", 400, "JSON" },
        { "PATCH", "/a/first", "application/json", "", 400, "body" },
        { "PATCH", "/a/first", null, null, 400, "body" },
        { "PATCH", "/a/first", "application/json", "[]", 400, "JSON" },
        { "PATCH", "/a/first", "application/json", "\"text\"", 400, "JSON" },
        { "PATCH", "/a/first", "application/json", "null", 400, "body" },
        { "PATCH", "/a/first", "application/json", "{}", 400, "data" },
        { "PATCH", "/a/first", "application/json", """{"data": null}""", 400, "data" },
        { "PATCH", "/a/first", "application/json", """{"data": 5}""", 400, "$.data" },
        { "PATCH", "/a/first", "application/json", """{"data": {"x": 1}}""", 400, "$.data" },
        { "PATCH", "/a/first", "application/json", """{"data": ["x"]}""", 400, "$.data" },
        { "PATCH", "/a/first", "application/json", """{"data": "nul \u0000 inside"}""", 400, "NUL" },
        { "PATCH", "/a/first", "application/json", """{"data": "lone \ud800 surrogate"}""", 400, "surrogate" },
        { "PATCH", "/a/first", "application/json", """{"data": "first", "data": "second"}""", 400, "$.data" },
        { "PATCH", "/a/first", "application/json", """{"data": "x", "id": 999}""", 400, "$.id" },
        { "PATCH", "/a/first", "application/json", """{"data": "x", "zzz": [1]}""", 400, "$.zzz" },
        { "PATCH", "/a/first", "text/plain", "new data", 415, "application/json" },
        { "POST", "/seed?count=0", null, null, 400, "count" },
        { "POST", "/seed?count=-5", null, null, 400, "count" },
        { "POST", "/seed?count=1000001", null, null, 400, "count" },
        { "POST", "/seed?count=2147483648", null, null, 400, "count" },
        { "POST", "/seed?count=ten", null, null, 400, "count" },
        { "POST", "/seed?count=", null, null, 400, "count" },
        { "GET", "/a?limit=0", null, null, 400, "limit must be an integer from 1 to 10,000" },
        { "GET", "/a?limit=-1", null, null, 400, "limit must be an integer from 1 to 10,000" },
        { "GET", "/a?limit=10001", null, null, 400, "limit must be an integer from 1 to 10,000" },
        { "GET", "/a?limit=abc", null, null, 400, "limit must be an integer from 1 to 10,000" },
        { "GET", "/a?limit=1.5", null, null, 400, "limit must be an integer from 1 to 10,000" },
        { "GET", "/a?after=abc", null, null, 400, "after must be an integer" },
        { "GET", "/a?after=1e3", null, null, 400, "after must be an integer" },
        { "GET", "/a?after=2147483648", null, null, 400, "after must be an integer" },
        { "GET", "/a/stream?after=abc", null, null, 400, "after must be an integer" },
        { "GET", "/a/stream?after=", null, null, 400, "after must be an integer" },
        { "POST", "/a", "text/plain", "{\"data\": \"x\"}", 415, "application/x-ndjson" },
        { "POST", "/a", "application/json", "{\"data\": \"x\"}", 415, "application/x-ndjson" },
        { "POST", "/a", "application/x-ndjson", "", 400, "no A" },
        { "POST", "/a", "application/x-ndjson", "\n  \n", 400, "no A" },
        { "GET", "/a/%20", null, null, 404, "/a/" },
        { "GET", "/a//first", null, null, 404, "/a//first" },
        { "GET", "/A/FIRST/../../reset", null, null, 405, "GET" },
        { "GET", "/nowhere", null, null, 404, "/nowhere" },
        { "GET", "/a/first/extra", null, null, 404, "/a/first/extra" },
        { "DELETE", "/a", null, null, 405, "DELETE" },
        { "PUT", "/a", null, null, 405, "PUT" },
        { "PUT", "/a/first", null, null, 405, "PUT" },
        { "GET", "/reset", null, null, 405, "GET" },
    };

    [Theory]
    [InlineData("GET", "/a?limit=abc", null, "limit", "limit must be an integer from 1 to 10,000", "It was 'abc'.")]
    [InlineData("GET", "/a?limit=0", null, "limit", "limit must be an integer from 1 to 10,000", "It was '0'.")]
    [InlineData("GET", "/a?after=x", null, "after", "after must be an integer", "It was 'x'.")]
    [InlineData("POST", "/seed?count=many", null, "count", "count must be an integer from 1 to 1,000,000", "It was 'many'.")]
    [InlineData("POST", "/seed?count=0", null, "count", "count must be an integer from 1 to 1,000,000", "It was '0'.")]
    [InlineData("GET", "/a/first", "0/XYZ", "Consistency-Token", "Consistency-Token must be a WAL position", "It was '0/XYZ'.")]
    public async Task A_parameter_of_another_type_or_out_of_range_answers_one_400_with_its_rule(
        string method, string path, string? token, string name, string rule, string was)
    {
        var request = new HttpRequestMessage(new HttpMethod(method), path);
        if (token is not null)
            request.Headers.TryAddWithoutValidation("Consistency-Token", token);
        var problem = await ProblemAsync(await Client.SendAsync(request), HttpStatusCode.BadRequest);
        Assert.Equal("Bad request", problem.GetProperty("title").GetString());
        var message = Assert.Single(problem.GetProperty("errors").GetProperty(name).EnumerateArray()).GetString()!;
        Assert.StartsWith(rule, message);
        Assert.EndsWith(was, message);
        Assert.Equal(message, problem.GetProperty("detail").GetString());
    }

    [Fact]
    public async Task A_body_over_the_limit_is_413_and_changes_nothing()
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        var huge = $$"""{"data": "{{new string('x', 2 * 1024 * 1024)}}"}""";
        // Expect: 100-continue, as curl sends for a large body: the 413 comes before the body is sent. Without it the
        // server's answer and its closing the connection could race the client's writing (Broken pipe, 1 run in ~10).
        var request = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = new StringContent(huge, Encoding.UTF8, "application/json") };
        request.Headers.ExpectContinue = true;
        var response = await Client.SendAsync(request);
        await ProblemAsync(response, HttpStatusCode.RequestEntityTooLarge);
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Fact]
    public async Task A_body_that_is_not_utf8_is_400_and_changes_nothing()
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        byte[] body = [.. "{\"data\": \""u8, 0xC3, 0x28, 0xFF, .. "\"}"u8];
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new("application/json");
        var problem = await ProblemAsync(await Client.PatchAsync("/a/first", content), HttpStatusCode.BadRequest);
        Assert.Contains("UTF-8", problem.GetProperty("detail").GetString());
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Theory]
    [InlineData("Robert'); DROP TABLE a;--")]
    [InlineData("émoji 🎉 ünïcödé 中文")]
    [InlineData("")]
    [InlineData("  leading and trailing  ")]
    [InlineData("line\nbreak\ttab \"quotes\" \\ backslash")]
    public async Task Odd_but_valid_text_is_stored_and_returned_verbatim(string data)
    {
        await Api.SeedAsync();
        var response = await Client.PatchAsync("/a/first", JsonContent.Create(new { data }));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(data, (await response.Content.ReadFromJsonAsync<ADto>())!.Data);
        Assert.Equal(data, await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
        Assert.Equal(data, (await Api.GetAllAsync())[0].Data);
        Assert.Equal(3L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task A_bad_request_is_a_clear_problem_and_changes_nothing(
        string method, string path, string? contentType, string? body, int status, string detailHolds)
    {
        // In Production too: the admin endpoints need their key there, and no detail may leak internals.
        var client = Production.CreateClient();
        client.DefaultRequestHeaders.Add("X-Api-Key", "k");
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();

        var request = new HttpRequestMessage(new HttpMethod(method), path);
        if (body is not null)
            request.Content = new StringContent(body, Encoding.UTF8, contentType ?? "application/json");
        var problem = await ProblemAsync(await client.SendAsync(request), (HttpStatusCode)status);

        var detail = problem.GetProperty("detail").GetString()!;
        Assert.Contains(detailHolds, detail);
        Assert.DoesNotContain("Exception", detail);
        Assert.DoesNotContain("   at ", detail);
        // One rule for every 400: its title is the status's, and nothing names the code's types or parameters.
        if (status == 400)
            Assert.Equal("Bad request", problem.GetProperty("title").GetString());
        foreach (var code in new[] { "PatchA", "Int32", "String", "System.", "HttpRequest", "\"int ", "\"string " })
            Assert.DoesNotContain(code, problem.GetRawText());
        Assert.Equal(before, await Api.SnapshotAsync());
    }
}
