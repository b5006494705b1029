using System.Diagnostics;
using System.Net;
using System.Text.Json;

namespace AsyncOrmApi.Tests;

static class Assertions
{
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>The seed's graph, <paramref name="copies"/> times, ids from 1: what GET /a must answer.</summary>
    public static List<ADto> SeedGraph(int copies = 1, string firstData = "a1")
    {
        var rows = new List<ADto>();
        int a = 0, b = 0;
        for (var copy = 0; copy < copies; copy++)
            foreach (var (data, bs) in new[] { ("a1", 2), ("a2", 1), ("a3", 2) })
            {
                a++;
                var id = a;
                rows.Add(new ADto(id, a == 1 ? firstData : data,
                    Enumerable.Range(0, bs).Select(_ => new BDto(++b, id, null)).ToList()));
            }
        return rows;
    }

    public static void Equivalent(List<ADto> expected, List<ADto> actual) =>
        Assert.Equal(JsonSerializer.Serialize(expected, Json), JsonSerializer.Serialize(actual, Json));

    public static async Task<JsonElement> ProblemAsync(HttpResponseMessage response, HttpStatusCode status)
    {
        Assert.Equal(status, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal((int)status, problem.GetProperty("status").GetInt32());
        Assert.False(string.IsNullOrEmpty(problem.GetProperty("title").GetString()));
        return problem;
    }

    public static async Task<List<ADto>> JsonArrayAsync(HttpResponseMessage response)
    {
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        return JsonSerializer.Deserialize<List<ADto>>(await response.Content.ReadAsStringAsync(), Json)!;
    }

    public static async Task<List<ADto>> NdJsonAsync(HttpResponseMessage response)
    {
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/x-ndjson", response.Content.Headers.ContentType?.MediaType);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(body.Length == 0 || body.EndsWith('\n'), "every NDJSON line ends with a newline");
        return body.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => JsonSerializer.Deserialize<ADto>(line, Json)!).ToList();
    }

    /// <summary>Polls every 50 ms, for up to <paramref name="seconds"/>, until <paramref name="find"/> gives something; returns it.</summary>
    public static async Task<T> EventuallyAsync<T>(string what, Func<Task<T?>> find, int seconds = 10) where T : class
    {
        for (var i = 0; i < seconds * 20; i++)
        {
            if (await find() is { } found)
                return found;
            await Task.Delay(50);
        }
        Assert.Fail($"waited {seconds} s for {what}");
        throw new UnreachableException();
    }

    public static Task EventuallyAsync(string what, Func<Task<bool>> condition, int seconds = 10) =>
        EventuallyAsync(what, async () => await condition() ? what : null, seconds);
}
