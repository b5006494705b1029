using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text.Json;

namespace AsyncOrmApi.Http;

/// <summary>
/// Reads an <c>application/x-ndjson</c> request body line by line as it arrives: one <see cref="NewA"/> per line,
/// never more than one line in memory. A bad line ends the body with a 400 that names its line number and field.
/// </summary>
public static class NdJsonLines
{
    public const string MediaType = "application/x-ndjson";

    /// <summary>A line is one A and its Bs; anything longer is a mistake (a missing newline) or an attack.</summary>
    public const int MaxLineBytes = 1024 * 1024;

    public static bool IsNdJson(HttpRequest request) =>
        request.GetTypedHeaders().ContentType?.MediaType.Equals(MediaType, StringComparison.OrdinalIgnoreCase) == true;

    /// <summary>The body's A in line order (blank lines are skipped, but counted in the line numbers of errors).</summary>
    public static async IAsyncEnumerable<NewA> ReadAsync(PipeReader body, [EnumeratorCancellation] CancellationToken ct)
    {
        var number = 0;
        while (true)
        {
            var read = await body.ReadAsync(ct);
            var buffer = read.Buffer;
            while (buffer.PositionOf((byte)'\n') is { } end)
            {
                var line = buffer.Slice(0, end);
                buffer = buffer.Slice(buffer.GetPosition(1, end));
                if (Parse(line, ++number) is { } a)
                    yield return a;
            }
            if (buffer.Length > MaxLineBytes)
                throw Bad(number + 1, $"it is longer than {MaxLineBytes / 1024 / 1024} MiB.");
            if (read.IsCompleted)
            {
                // The last line need not end with a newline.
                if (Parse(buffer, ++number) is { } a)
                    yield return a;
                break;
            }
            body.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    static NewA? Parse(ReadOnlySequence<byte> line, int number)
    {
        if (line.Length > MaxLineBytes)
            throw Bad(number, $"it is longer than {MaxLineBytes / 1024 / 1024} MiB.");
        if (IsBlank(line))
            return null;
        NewA? a;
        try
        {
            var reader = new Utf8JsonReader(line);
            a = JsonSerializer.Deserialize(ref reader, WireJson.Default.NewA);
        }
        catch (JsonException e)
        {
            throw Bad(number, Describe(e));
        }
        if (a is null)
            throw Bad(number, "it is null: each line must be a JSON object such as {\"data\": \"x\", \"bs\": [{\"data\": null}]}.");
        if (a.Data?.Contains('\0') == true)
            throw Bad(number, "$.data contains the NUL character (U+0000): PostgreSQL text cannot store it.");
        for (var i = 0; i < a.Bs?.Count; i++)
        {
            if (a.Bs[i] is null)
                throw Bad(number, $"$.bs[{i}] is null: each B is an object such as {{\"data\": \"y\"}}.");
            if (a.Bs[i].Data?.Contains('\0') == true)
                throw Bad(number, $"$.bs[{i}].data contains the NUL character (U+0000): PostgreSQL text cannot store it.");
        }
        return a;
    }

    // The serializer's words name .NET types; say what the line should hold instead.
    static string Describe(JsonException e) => e switch
    {
        { InnerException: JsonException syntax } =>
            $"it is not valid JSON (byte {syntax.BytePositionInLine + 1}): {syntax.Message.Split(" LineNumber:")[0]}",
        // Bytes that are not UTF-8, or a lone UTF-16 surrogate in an escape: no text PostgreSQL could store.
        { Path: { } path, InnerException: InvalidOperationException } => $"the string at {path} is not valid UTF-8 text.",
        { Path: { } path } when e.Message.StartsWith("The JSON value could not be converted") =>
            $"the value at {path} has the wrong type: data is a string or null, bs an array of objects with a data.",
        { Path: { } path } when e.Message.Contains("could not be mapped to any .NET member") =>
            $"{path} is not a field of an A or a B: a line holds only data and bs, a B only data (ids come from the tables' sequences).",
        _ => e.Message,
    };

    static bool IsBlank(ReadOnlySequence<byte> line)
    {
        foreach (var segment in line)
            foreach (var b in segment.Span)
                if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r'))
                    return false;
        return true;
    }

    static BadHttpRequestException Bad(int line, string why) =>
        new($"Line {line} of the NDJSON body was rejected and nothing was added: {why}", StatusCodes.Status400BadRequest);
}
