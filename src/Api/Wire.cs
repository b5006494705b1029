using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Mvc;

namespace AsyncOrmApi;

/// <summary>An A as the API sends it: <c>{"id","data","bs"}</c>.</summary>
public sealed record ADto(int Id, string? Data, List<BDto> Bs)
{
    /// <summary>
    /// True when <c>bs</c> holds only the first of this A's Bs: a page holds at most <see cref="Data.Queries.MaxRows"/>
    /// rows. GET /a/stream?after={id - 1} has the A whole. Absent otherwise.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public bool? BsHasMore { get; init; }
}

/// <summary>A B as the API sends it: <c>{"id","aId","data"}</c>.</summary>
public sealed record BDto(int Id, int? AId, string? Data);

/// <summary>Body of <c>PATCH /a/first</c>: the new value of the first A's <c>data</c>, and nothing else.</summary>
[JsonUnmappedMemberHandling(JsonUnmappedMemberHandling.Disallow)]
public sealed record PatchA(string? Data);

/// <summary>How many rows <c>POST /seed</c> or <c>POST /a</c> added.</summary>
public sealed record RowCounts(long A, long B);

/// <summary>What <c>POST /a</c> with a resolution preference did to each table's rows.</summary>
public sealed record SyncCounts(RowChangeCounts A, RowChangeCounts B);

/// <summary>Rows inserted, updated, and named but left as they were (equal, or kept by ignore-duplicates).</summary>
public sealed record RowChangeCounts(long Inserted, long Updated, long Unchanged);

/// <summary>
/// One line of a <c>POST /a</c> body: an A and its Bs, as a line of <c>GET /a/stream</c>'s NDJSON; without ids they
/// come from the tables' sequences. It documents the line; <see cref="Http.NdJsonLines"/> reads lines straight into
/// batches, without an object per line.
/// </summary>
public sealed record NewA(int? Id, string? Data, List<NewB>? Bs);

/// <summary>A B inside a <see cref="NewA"/> line; its <c>aId</c>, when given, is the id of that A.</summary>
public sealed record NewB(int? Id, int? AId, string? Data);

/// <summary>Answer of the health probes.</summary>
public sealed record HealthStatus(string Status);

/// <summary>
/// The one JSON setup of the API (web defaults: camelCase), source-generated so the hot paths
/// serialize without reflection.
/// </summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(ADto))]
[JsonSerializable(typeof(List<ADto>))]
[JsonSerializable(typeof(PatchA))]
[JsonSerializable(typeof(RowCounts))]
[JsonSerializable(typeof(SyncCounts))]
[JsonSerializable(typeof(HealthStatus))]
[JsonSerializable(typeof(ProblemDetails))]
[JsonSerializable(typeof(HttpValidationProblemDetails))]
public sealed partial class WireJson : JsonSerializerContext
{
    /// <summary>The API's JSON options: these types first, and bodies read strictly (no field twice, none unknown, as POST /a).</summary>
    public static void Configure(JsonSerializerOptions options)
    {
        options.TypeInfoResolverChain.Insert(0, Default);
        options.AllowDuplicateProperties = false;
        options.Encoder = MinimalJsonEncoder.Instance;
    }
}

/// <summary>
/// Escapes only what JSON requires (RFC 8259: the quote, the backslash and control characters), so that text is its
/// UTF-8 size on every wire. ASP.NET Core's default also escapes every character outside the Basic Multilingual Plane
/// (an emoji became 12 bytes), and System.Text.Json's own default HTML-sensitive ones too (<c>&lt;</c> became 6 bytes).
/// </summary>
public sealed class MinimalJsonEncoder : System.Text.Encodings.Web.JavaScriptEncoder
{
    public static readonly MinimalJsonEncoder Instance = new();

    static readonly System.Buffers.SearchValues<char> Chars = System.Buffers.SearchValues.Create(
        [.. Enumerable.Range(0, 0x20).Select(c => (char)c), '"', '\\']);
    static readonly System.Buffers.SearchValues<byte> Bytes = System.Buffers.SearchValues.Create(
        [.. Enumerable.Range(0, 0x20).Select(c => (byte)c), (byte)'"', (byte)'\\']);

    public override int MaxOutputCharactersPerInputCharacter => 12;      // a surrogate pair as two \uXXXX

    public override bool WillEncode(int unicodeScalar) => unicodeScalar is < 0x20 or '"' or '\\';

    public override unsafe int FindFirstCharacterToEncode(char* text, int textLength)
    {
        var span = new ReadOnlySpan<char>(text, textLength);
        var i = span.IndexOfAny(Chars);
        // A lone surrogate is no text: it is escaped rather than written as invalid UTF-8.
        var lone = IndexOfLoneSurrogate(i < 0 ? span : span[..i]);
        return lone >= 0 ? lone : i;
    }

    public override int FindFirstCharacterToEncodeUtf8(ReadOnlySpan<byte> utf8Text) => utf8Text.IndexOfAny(Bytes);

    public override unsafe bool TryEncodeUnicodeScalar(int unicodeScalar, char* buffer, int bufferLength, out int numberOfCharactersWritten)
    {
        var escape = unicodeScalar switch
        {
            '"' => "\\\"", '\\' => "\\\\", '\n' => "\\n", '\r' => "\\r", '\t' => "\\t", '\b' => "\\b", '\f' => "\\f",
            < 0x20 or (>= 0xD800 and <= 0xDFFF) => $"\\u{unicodeScalar:X4}",
            < 0x10000 => ((char)unicodeScalar).ToString(),
            _ => char.ConvertFromUtf32(unicodeScalar),
        };
        numberOfCharactersWritten = 0;
        if (escape.Length > bufferLength)
            return false;
        escape.CopyTo(new Span<char>(buffer, bufferLength));
        numberOfCharactersWritten = escape.Length;
        return true;
    }

    static int IndexOfLoneSurrogate(ReadOnlySpan<char> text)
    {
        for (var i = text.IndexOfAnyInRange('\uD800', '\uDFFF'); i >= 0 && i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
                continue;
            }
            if (char.IsSurrogate(text[i]))
                return i;
        }
        return -1;
    }
}
