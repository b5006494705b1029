using System.Net;
using System.Text;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>Bad requests: a clear problem+json 4xx, never a 5xx, and the database as it was.</summary>
public sealed class ErrorTests(ApiFactory api) : ApiTest(api)
{
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
        { "PATCH", "/a/first", "text/plain", "new data", 415, "application/json" },
        { "POST", "/seed?count=0", null, null, 400, "count" },
        { "GET", "/nowhere", null, null, 404, "/nowhere" },
        { "GET", "/a/first/extra", null, null, 404, "/a/first/extra" },
        { "DELETE", "/a", null, null, 405, "DELETE" },
        { "PUT", "/a/first", null, null, 405, "PUT" },
        { "GET", "/reset", null, null, 405, "GET" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task A_bad_request_is_a_clear_problem_and_changes_nothing(
        string method, string path, string? contentType, string? body, int status, string detailHolds)
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();

        var request = new HttpRequestMessage(new HttpMethod(method), path);
        if (body is not null)
            request.Content = new StringContent(body, Encoding.UTF8, contentType ?? "application/json");
        var problem = await ProblemAsync(await Client.SendAsync(request), (HttpStatusCode)status);

        Assert.Contains(detailHolds, problem.GetProperty("detail").GetString());
        Assert.Equal(before, await Api.SnapshotAsync());
    }
}
