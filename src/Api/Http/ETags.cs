using Microsoft.Net.Http.Headers;

namespace AsyncOrmApi.Http;

/// <summary>Strong ETags from a row version (PostgreSQL's xmin), and the conditional headers that carry them.</summary>
public static class ETags
{
    public static string Format(uint version) => $"\"{version}\"";

    public static void Set(HttpResponse response, uint version) => response.Headers.ETag = Format(version);

    /// <summary>
    /// The versions an <c>If-Match</c> header accepts: null when absent or <c>*</c> (any version will do),
    /// else the strong ETags it lists (weak ones never match, RFC 9110 13.1.1), possibly none.
    /// </summary>
    public static uint[]? Accepted(string? ifMatch)
    {
        if (string.IsNullOrWhiteSpace(ifMatch) || ifMatch.Trim() == "*")
            return null;
        var versions = new List<uint>();
        if (EntityTagHeaderValue.TryParseList([ifMatch], out var tags))
            foreach (var tag in tags)
                if (!tag.IsWeak && uint.TryParse(tag.Tag.AsSpan()[1..^1], out var version))
                    versions.Add(version);
        return [.. versions];
    }

    /// <summary>True when <c>If-None-Match</c> names this version (weak comparison, RFC 9110 13.1.2), or is <c>*</c>.</summary>
    public static bool NoneMatchHits(string? ifNoneMatch, uint version) =>
        !string.IsNullOrWhiteSpace(ifNoneMatch)
        && EntityTagHeaderValue.TryParseList([ifNoneMatch], out var tags)
        && tags.Any(t => t.Tag == "*" || t.Tag == Format(version));
}
