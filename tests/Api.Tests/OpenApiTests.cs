using System.Net;
using System.Text.Json;

namespace AsyncOrmApi.Tests;

public sealed class OpenApiTests(ApiFactory api) : ApiTest(api)
{
    [Fact]
    public async Task The_document_describes_every_operation_with_its_responses()
    {
        var response = await Client.GetAsync("/swagger/v1/swagger.json");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;

        var info = doc.GetProperty("info");
        Assert.Equal("AsyncOrmApi", info.GetProperty("title").GetString());
        Assert.Equal("v1", info.GetProperty("version").GetString());
        Assert.Contains("async_orm.py", info.GetProperty("description").GetString());

        string[][] expected =
        [
            ["/reset", "post", "Admin", "204 400 401 403 409 422 429 503 504"],
            ["/seed", "post", "Admin", "201 400 401 403 409 422 429 503 504"],
            ["/a", "get", "A", "200 400 429 503 504"],
            ["/a", "post", "A", "200 201 400 401 403 408 409 413 415 422 429 503"],
            ["/a/first", "get", "A", "200 304 400 404 429 503 504"],
            ["/a/stream", "get", "A", "200 400 429 503"],
            ["/a/changes", "get", "A", "200 400 409 429 503"],
            ["/a/first", "patch", "A", "200 400 404 409 412 413 415 422 429 503 504"],
        ];
        var paths = doc.GetProperty("paths");
        Assert.Equal(expected.Select(e => e[0]).Distinct().Order(), paths.EnumerateObject().Select(p => p.Name).Order());
        foreach (var e in expected)
        {
            var op = paths.GetProperty(e[0]).GetProperty(e[1]);
            Assert.False(string.IsNullOrWhiteSpace(op.GetProperty("summary").GetString()), $"{e[1]} {e[0]} has a summary");
            Assert.False(string.IsNullOrWhiteSpace(op.GetProperty("description").GetString()), $"{e[1]} {e[0]} has a description");
            Assert.False(string.IsNullOrWhiteSpace(op.GetProperty("operationId").GetString()), $"{e[1]} {e[0]} has a name");
            Assert.Equal(e[2], op.GetProperty("tags")[0].GetString());
            var codes = op.GetProperty("responses").EnumerateObject().Select(r => r.Name).ToHashSet();
            Assert.Equal(e[3].Split(' ').ToHashSet(), codes);
            foreach (var code in codes.Where(c => c[0] is '4' or '5'))
                Assert.True(op.GetProperty("responses").GetProperty(code).GetProperty("content").TryGetProperty("application/problem+json", out _),
                    $"{e[1]} {e[0]} {code} is documented as problem+json");
        }

        // The conditional requests and the headers that carry versions and retry hints.
        var patch = paths.GetProperty("/a/first").GetProperty("patch");
        Assert.Contains(patch.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == "If-Match" && p.GetProperty("in").GetString() == "header");
        Assert.True(patch.GetProperty("responses").GetProperty("200").GetProperty("headers").TryGetProperty("ETag", out _));
        Assert.True(patch.GetProperty("responses").GetProperty("412").GetProperty("headers").TryGetProperty("ETag", out _));
        var get = paths.GetProperty("/a/first").GetProperty("get");
        Assert.Contains(get.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == "If-None-Match");
        Assert.True(get.GetProperty("responses").GetProperty("304").GetProperty("headers").TryGetProperty("ETag", out _));
        Assert.True(paths.GetProperty("/a").GetProperty("get").GetProperty("responses").GetProperty("503").GetProperty("headers").TryGetProperty("Retry-After", out _));
        Assert.True(patch.GetProperty("responses").GetProperty("429").GetProperty("headers").TryGetProperty("Retry-After", out _));

        // Paging: the parameters say what they accept, and the 200 says where the next page is.
        var page = paths.GetProperty("/a").GetProperty("get");
        foreach (var name in new[] { "limit", "after" })
            Assert.Contains(page.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == name
                && p.GetProperty("in").GetString() == "query" && p.GetProperty("description").GetString()!.StartsWith(name + " must be"));
        Assert.True(page.GetProperty("responses").GetProperty("200").GetProperty("headers").TryGetProperty("Link", out _));
        Assert.True(paths.GetProperty("/a").GetProperty("post").GetProperty("requestBody").GetProperty("content").TryGetProperty("application/x-ndjson", out _));

        var stream = paths.GetProperty("/a/stream").GetProperty("get").GetProperty("responses").GetProperty("200").GetProperty("content");
        Assert.True(stream.TryGetProperty("application/x-ndjson", out _));
        Assert.True(stream.TryGetProperty("application/json", out _));

        // Read-your-writes: every read takes Consistency-Token, every write's success answers with it.
        foreach (var path in new[] { "/a", "/a/first", "/a/stream" })
            Assert.Contains(paths.GetProperty(path).GetProperty("get").GetProperty("parameters").EnumerateArray(), p =>
                p.GetProperty("name").GetString() == "Consistency-Token" && p.GetProperty("in").GetString() == "header"
                && p.GetProperty("description").GetString()!.StartsWith("Consistency-Token must be"));
        foreach (var (path, method, code) in new[] { ("/a/first", "patch", "200"), ("/a", "post", "201"), ("/seed", "post", "201"), ("/reset", "post", "204") })
            Assert.True(paths.GetProperty(path).GetProperty(method).GetProperty("responses").GetProperty(code).GetProperty("headers")
                .TryGetProperty("Consistency-Token", out _), $"{method} {path} {code} documents Consistency-Token");

        // Exactly-once writes: every write takes Idempotency-Key and says what a replay answers.
        foreach (var (path, method, code) in new[] { ("/a/first", "patch", "200"), ("/a", "post", "201"), ("/seed", "post", "201"), ("/reset", "post", "204") })
        {
            var op = paths.GetProperty(path).GetProperty(method);
            Assert.Contains(op.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == "Idempotency-Key"
                && p.GetProperty("in").GetString() == "header" && p.GetProperty("description").GetString()!.StartsWith("Idempotency-Key must be"));
            Assert.True(op.GetProperty("responses").GetProperty(code).GetProperty("headers").TryGetProperty("Idempotent-Replayed", out _));
            Assert.True(op.GetProperty("responses").GetProperty("409").GetProperty("headers").TryGetProperty("Retry-After", out _));
            Assert.Contains("another request", op.GetProperty("responses").GetProperty("422").GetProperty("description").GetString());
        }

        // The change feed: an event stream, resumable by header or query, 409 when it cannot resume.
        var changes = paths.GetProperty("/a/changes").GetProperty("get");
        Assert.True(changes.GetProperty("responses").GetProperty("200").GetProperty("content").TryGetProperty("text/event-stream", out _));
        foreach (var (name, where) in new[] { ("Last-Event-ID", "header"), ("after", "query") })
            Assert.Contains(changes.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == name
                && p.GetProperty("in").GetString() == where && p.GetProperty("description").GetString()!.StartsWith(name + " must be"));
        foreach (var word in new[] { "a.insert", "b.delete", "reset", "Last-Event-ID", "409" })
            Assert.Contains(word, changes.GetProperty("description").GetString());
    }

    /// <summary>What Redocly's recommended rules and Spectral's spectral:oas ask, which the lint commands of docs/openapi.md check in full.</summary>
    [Fact]
    public async Task The_document_gives_linters_and_client_generators_what_they_ask_for()
    {
        var doc = JsonDocument.Parse(await Client.GetStringAsync("/swagger/v1/swagger.json")).RootElement;
        var info = doc.GetProperty("info");
        Assert.False(string.IsNullOrEmpty(info.GetProperty("contact").GetProperty("name").GetString()));
        Assert.Equal("MIT", info.GetProperty("license").GetProperty("name").GetString());
        Assert.StartsWith("https://", info.GetProperty("license").GetProperty("url").GetString());
        Assert.Equal("/", doc.GetProperty("servers")[0].GetProperty("url").GetString());
        var tags = doc.GetProperty("tags").EnumerateArray().ToDictionary(t => t.GetProperty("name").GetString()!, t => t.GetProperty("description").GetString());
        Assert.Equal(["A", "Admin"], tags.Keys.Order());
        Assert.All(tags.Values, d => Assert.False(string.IsNullOrWhiteSpace(d)));

        foreach (var path in doc.GetProperty("paths").EnumerateObject())
            foreach (var op in path.Value.EnumerateObject())
            {
                var security = op.Value.GetProperty("security");
                var admin = op.Value.GetProperty("tags")[0].GetString() == "Admin" || (path.Name, op.Name) == ("/a", "post");
                Assert.Equal(admin ? 1 : 0, security.GetArrayLength());
                Assert.Contains(op.Value.GetProperty("responses").EnumerateObject(), r => r.Name.StartsWith('4'));
            }
    }

    [Fact]
    public async Task Swagger_ui_serves_and_the_root_redirects_to_it()
    {
        using var noRedirects = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false }) { BaseAddress = Client.BaseAddress };
        var root = await noRedirects.GetAsync("/");
        Assert.Equal(HttpStatusCode.Redirect, root.StatusCode);
        Assert.Equal("/swagger", root.Headers.Location?.OriginalString);

        var ui = await Client.GetAsync("/swagger/index.html");
        Assert.Equal(HttpStatusCode.OK, ui.StatusCode);
        Assert.Equal("text/html", ui.Content.Headers.ContentType?.MediaType);
        Assert.Contains("swagger-ui", await ui.Content.ReadAsStringAsync());
    }
}
