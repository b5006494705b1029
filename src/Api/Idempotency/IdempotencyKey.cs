using Microsoft.Extensions.Primitives;

namespace AsyncOrmApi.Idempotency;

/// <summary>
/// The request header <c>Idempotency-Key</c>: the draft's quoted string (<c>"8e03978e-…"</c>, draft-ietf-httpapi-idempotency-key-header)
/// or the bare form Stripe's clients send (<c>8e03978e-…</c>); both are the same key.
/// </summary>
public readonly record struct IdempotencyKey(string Value)
{
    public const string Header = "Idempotency-Key";
    public const int MaxLength = 255;

    public static readonly Http.ParameterRule Rule = new(Header,
        $"{Header} must be 1 to {MaxLength} printable ASCII characters, bare or as a quoted string (\"...\"): one key per "
        + "logical operation, a UUID say. A retry with the same key and the same request replays the first answer "
        + "(Idempotent-Replayed: true) instead of running again; the same key with another request is 422.");

    /// <summary>The key a request sent; false when the header is empty, repeated, a broken quoted string or not the rule's form.</summary>
    public static bool TryParse(StringValues header, out IdempotencyKey key)
    {
        key = default;
        if (header.Count != 1 || header[0] is not { } text)
            return false;
        if (text.Length >= 2 && text[0] == '"' && text[^1] == '"')
        {
            // An sf-string (RFC 8941): \" and \\ are its only escapes.
            var inner = new System.Text.StringBuilder(text.Length);
            for (var i = 1; i < text.Length - 1; i++)
            {
                var c = text[i];
                if (c == '\\' && i + 1 < text.Length - 1 && text[i + 1] is '"' or '\\')
                    c = text[++i];
                else if (c is '"' or '\\')
                    return false;
                inner.Append(c);
            }
            text = inner.ToString();
        }
        else if (text.StartsWith('"'))
            return false;
        if (text.Length is 0 or > MaxLength || text.Any(c => c is < ' ' or > '~'))
            return false;
        key = new IdempotencyKey(text);
        return true;
    }
}
