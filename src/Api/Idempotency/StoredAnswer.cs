namespace AsyncOrmApi.Idempotency;

/// <summary>
/// A write's successful answer as it was sent (status, body and the headers a client needs again), stored with the
/// write and replayed to its retries.
/// </summary>
public sealed class StoredAnswer(int status, Dictionary<string, string> headers, byte[] body, bool replayed) : IResult, IStatusCodeHttpResult
{
    public const string ReplayedHeader = "Idempotent-Replayed";

    /// <summary>The headers kept: what a client reads from a write's answer. Consistency-Token is not one: a replay answers a current one.</summary>
    static readonly string[] Kept = ["Content-Type", "Location", "ETag", "Preference-Applied"];

    public int Status => status;
    public IReadOnlyDictionary<string, string> Headers => headers;
    public byte[] Body => body;
    int? IStatusCodeHttpResult.StatusCode => status;

    public StoredAnswer AsReplay() => new(status, headers, body, replayed: true);

    /// <summary>Runs <paramref name="result"/> into memory rather than onto the wire, so that it can be stored before it is sent.</summary>
    public static async Task<StoredAnswer> CaptureAsync(HttpContext http, IResult result)
    {
        var response = http.Response;
        var wire = response.Body;
        using var buffer = new MemoryStream();
        response.Body = buffer;
        try
        {
            await result.ExecuteAsync(http);
        }
        finally
        {
            response.Body = wire;
        }
        var kept = Kept.Where(name => response.Headers.ContainsKey(name)).ToDictionary(name => name, name => response.Headers[name].ToString());
        return new StoredAnswer(response.StatusCode, kept, buffer.ToArray(), replayed: false);
    }

    public Task ExecuteAsync(HttpContext http)
    {
        var response = http.Response;
        response.StatusCode = status;
        foreach (var (name, value) in headers)
            response.Headers[name] = value;
        if (replayed)
            response.Headers[ReplayedHeader] = "true";
        if (body.Length == 0)
            return Task.CompletedTask;
        response.ContentLength = body.Length;
        return response.Body.WriteAsync(body, http.RequestAborted).AsTask();
    }
}
