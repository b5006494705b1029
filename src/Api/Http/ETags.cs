using Microsoft.Net.Http.Headers;

namespace AsyncOrmApi.Http;

/// <summary>Strong ETags from a row version (PostgreSQL's xmin), and the conditional headers that carry them.</summary>
public static class ETags
{
    public static string Format(uint version) => $"\"{version}\"";

    public static void Set(HttpResponse response, uint version) => response.Headers.ETag = Format(version);

    public static readonly ParameterRule IfMatch = new("If-Match",
        "If-Match must be * alone or a list of entity tags (\"...\" or W/\"...\", RFC 9110 13.1.1), such as the ETag of GET /a/first.");

    public static readonly ParameterRule IfNoneMatch = new("If-None-Match",
        "If-None-Match must be * alone or a list of entity tags (\"...\" or W/\"...\", RFC 9110 13.1.2), such as the ETag of GET /a/first.");

    /// <summary>
    /// Reads a conditional header: false when it is not RFC 9110's <c>"*" / #entity-tag</c> (<c>*</c> beside a tag, a tag
    /// without quotes); else <paramref name="any"/> for <c>*</c> or no header, and the tags it lists.
    /// </summary>
    static bool TryRead(string? header, out bool any, out IList<EntityTagHeaderValue> tags)
    {
        tags = [];
        any = string.IsNullOrWhiteSpace(header);
        if (any)
            return true;
        if (!EntityTagHeaderValue.TryParseStrictList([header!], out var parsed) || parsed.Count == 0)
            return false;
        if (parsed.Any(t => t.Tag == "*"))
        {
            any = true;
            return parsed.Count == 1;
        }
        tags = parsed;
        return true;
    }

    /// <summary>
    /// The versions an <c>If-Match</c> header accepts: null when absent or <c>*</c> (any version will do), else the strong
    /// ETags it lists (weak ones never match, RFC 9110 13.1.1), possibly none. False when the header is malformed.
    /// </summary>
    public static bool TryAccepted(string? ifMatch, out uint[]? versions)
    {
        versions = null;
        if (!TryRead(ifMatch, out var any, out var tags))
            return false;
        if (!any)
            versions = [.. tags.Where(t => !t.IsWeak && uint.TryParse(t.Tag.AsSpan()[1..^1], out _)).Select(t => uint.Parse(t.Tag.AsSpan()[1..^1]))];
        return true;
    }

    /// <summary>
    /// Whether <c>If-None-Match</c> names this version (weak comparison, RFC 9110 13.1.2), or is <c>*</c>; false when the
    /// header is malformed.
    /// </summary>
    public static bool TryNoneMatchHits(string? ifNoneMatch, uint version, out bool hits)
    {
        hits = false;
        if (!TryRead(ifNoneMatch, out var any, out var tags))
            return false;
        hits = !string.IsNullOrWhiteSpace(ifNoneMatch) && (any || tags.Any(t => t.Tag == Format(version)));
        return true;
    }
}
