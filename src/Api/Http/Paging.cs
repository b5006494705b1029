namespace AsyncOrmApi.Http;

/// <summary>
/// Keyset paging on the A's primary key: <c>?after=ID&amp;limit=N</c> in, an RFC 8288 <c>Link: rel="next"</c> out,
/// so that clients follow links instead of building them and page 3,000 costs what page 1 costs.
/// </summary>
public static class Paging
{
    public const int DefaultLimit = 1_000;
    public const int MaxLimit = 10_000;

    public static readonly ParameterRule Limit = new("limit",
        $"limit must be an integer from 1 to {MaxLimit:N0}: the most A a page holds (default {DefaultLimit:N0}).", 1, MaxLimit);

    public static readonly ParameterRule After = new("after",
        "after must be an integer: the id of the last A already received; only A with a greater id follow (default: from the start).");

    /// <summary>When <c>after</c> is absent: every id is greater than this.</summary>
    public static int Start(int? after) => after ?? int.MinValue;

    /// <summary>Points the client at the page after <paramref name="lastId"/>, relative to this request's URL.</summary>
    public static void SetNext(HttpContext http, int lastId, int limit) =>
        http.Response.Headers.Link = $"<{http.Request.PathBase}/a?after={lastId}&limit={limit}>; rel=\"next\"";
}
