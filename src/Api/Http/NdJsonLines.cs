using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Unicode;
using AsyncOrmApi.Data;

namespace AsyncOrmApi.Http;

/// <summary>
/// Reads an <c>application/x-ndjson</c> request body line by line as it arrives, one A per line
/// (<see cref="NewA"/>), into batches of <see cref="NewRows"/>: never more than a batch and a line in memory.
/// A bad line ends the body with a 400 that names its line number and field.
/// </summary>
public static class NdJsonLines
{
    public const string MediaType = "application/x-ndjson";

    /// <summary>A line is one A and its Bs; anything longer is a mistake (a missing newline) or an attack.</summary>
    public const int MaxLineBytes = 1024 * 1024;

    // What one COPY round sends: a few MB at most, whatever the body's size (and NewRows.BatchA lines).
    const int BatchBytes = 2 * 1024 * 1024;

    const string Example = """{"data": "x", "bs": [{"data": "y"}, {"data": null}]}""";

    public static bool IsNdJson(HttpRequest request) =>
        request.GetTypedHeaders().ContentType?.MediaType.Equals(MediaType, StringComparison.OrdinalIgnoreCase) == true;

    /// <summary>
    /// The least a body must bring: <c>BytesPerSecond</c> × <c>Window</c> bytes in every <c>Window</c> spent waiting for
    /// it. Kestrel's own minimum rate is an average over the whole body, which a client that sends one fast batch and then
    /// trickles (300 B/s) stays above for minutes, holding the ingest's transaction and locks all along (issue 16).
    /// </summary>
    public sealed record MinRate(int BytesPerSecond, TimeSpan Window)
    {
        public static MinRate From(IngestOptions ingest) => new(ingest.MinBytesPerSecond, TimeSpan.FromSeconds(ingest.StallSeconds));
    }

    /// <summary>The body's A in line order, in batches (blank lines are skipped, but counted in the line numbers of errors).</summary>
    /// <exception cref="BadHttpRequestException">408 when the body comes slower than <paramref name="rate"/>.</exception>
    public static async IAsyncEnumerable<NewRows> ReadAsync(PipeReader body, MinRate rate, [EnumeratorCancellation] CancellationToken ct)
    {
        var number = 0;
        var rows = new NewRows();
        var text = new byte[4096];
        var ids = new BodyIds();
        ReadResult read = default;
        var reading = false;
        // Only the time spent waiting for the client counts, not the time the COPY keeps the reading waiting; and a read
        // that data already answers costs no timer: the watchdog is armed only while a read waits.
        using var watchdog = new Timer(static reader => ((PipeReader)reader!).CancelPendingRead(), body, Timeout.Infinite, Timeout.Infinite);
        var (waited, received, left) = (TimeSpan.Zero, 0L, 0L);
        try
        {
            while (true)
            {
                var pending = body.ReadAsync(ct);
                if (!pending.IsCompleted)
                {
                    var start = Stopwatch.GetTimestamp();
                    watchdog.Change(TimeSpan.FromTicks(Math.Max(1, (rate.Window - waited).Ticks)), Timeout.InfiniteTimeSpan);
                    read = await pending;
                    watchdog.Change(Timeout.Infinite, Timeout.Infinite);
                    waited += Stopwatch.GetElapsedTime(start);
                }
                else
                    read = await pending;
                if (read.IsCanceled)
                    throw new BadHttpRequestException($"The body came slower than {rate.BytesPerSecond:N0} bytes a second for "
                        + $"{rate.Window.TotalSeconds:0.#} s, after {number:N0} lines; nothing was added. Send it again.",
                        StatusCodes.Status408RequestTimeout);
                reading = true;
                var buffer = read.Buffer;
                received += buffer.Length - left;
                if (received >= rate.BytesPerSecond * rate.Window.TotalSeconds)
                    (waited, received) = (TimeSpan.Zero, 0);
                while (buffer.PositionOf((byte)'\n') is { } end)
                {
                    Parse(buffer.Slice(0, end), ++number, rows, ids, ref text);
                    buffer = buffer.Slice(buffer.GetPosition(1, end));
                    if (rows.A >= NewRows.BatchA || rows.Bytes >= BatchBytes)
                    {
                        yield return rows;
                        rows = new NewRows();
                    }
                }
                if (buffer.Length > MaxLineBytes)
                    throw Bad(number + 1, $"it is longer than {MaxLineBytes / 1024 / 1024} MiB.");
                if (read.IsCompleted)
                {
                    // The last line need not end with a newline.
                    Parse(buffer, ++number, rows, ids, ref text);
                    break;
                }
                body.AdvanceTo(buffer.Start, buffer.End);
                left = buffer.Length;
                reading = false;
            }
        }
        finally
        {
            // After a bad line too, so that Kestrel can still drain the rest of the body.
            if (reading)
                body.AdvanceTo(read.Buffer.End);
        }
        if (rows.A > 0)
            yield return rows;
        else
            rows.Dispose();
    }

    /// <summary>
    /// What the lines of one body must agree on: a body names every id, each A's and each B's, or none (ids the sequences
    /// gave the unnamed rows could collide with ids named later), and names each id once. Seen ids are kept as bits in
    /// pages of 65,536 ids (8 KB each): the 2.5 million ids of script/bench's million-line sync take 39 pages, 312 KB.
    /// Ids strewn one per page would cost 8 KB each, up to 256 MB a table for the whole int32 range: the endpoint takes the
    /// admin key, and Ingest:MaxBodyBytes bounds how many ids a body can name.
    /// </summary>
    sealed class BodyIds
    {
        public bool? Named;
        public int FirstLine;
        public readonly IdSet As = new(), Bs = new();
        public readonly List<int> ParentIds = [];
    }

    sealed class IdSet
    {
        readonly Dictionary<int, ulong[]> _pages = [];

        /// <summary>False when <paramref name="id"/> was added before.</summary>
        public bool Add(int id)
        {
            if (!_pages.TryGetValue(id >> 16, out var page))
                _pages[id >> 16] = page = new ulong[1024];
            ref var word = ref page[(id & 0xFFFF) >> 6];
            var bit = 1UL << (id & 63);
            if ((word & bit) != 0)
                return false;
            word |= bit;
            return true;
        }
    }

    /// <summary>Appends the A of one line to <paramref name="rows"/>, strictly: only the fields an A and a B have.</summary>
    static void Parse(ReadOnlySequence<byte> line, int number, NewRows rows, BodyIds ids, ref byte[] text)
    {
        if (line.Length > MaxLineBytes)
            throw Bad(number, $"it is longer than {MaxLineBytes / 1024 / 1024} MiB.");
        if (IsBlank(line))
            return;
        var json = new Utf8JsonReader(line);
        // Where the reader is, for errors; a B's path is only spelled out when a line is rejected.
        var path = "$";
        var b = -1;
        try
        {
            json.Read();
            if (json.TokenType == JsonTokenType.Null)
                throw Bad(number, $"it is null: each line must be a JSON object such as {Example}.");
            Expect(ref json, JsonTokenType.StartObject, number, path);
            rows.StartA(number);
            bool data = false, bs = false;
            int? id = null;
            var bsNamed = 0;
            ids.ParentIds.Clear();
            while (json.Read() && json.TokenType == JsonTokenType.PropertyName)
            {
                if (json.ValueTextEquals("data"u8) && !data)
                {
                    data = true;
                    path = "$.data";
                    json.Read();
                    if (ReadText(ref json, number, path, ref text) is { } length)
                        rows.SetData(text.AsSpan(0, length));
                    else
                        rows.SetNullData();
                }
                else if (json.ValueTextEquals("id"u8) && id is null)
                {
                    path = "$.id";
                    json.Read();
                    id = ReadId(ref json, number, path);
                    rows.SetId(id.Value);
                }
                else if (json.ValueTextEquals("bs"u8) && !bs)
                {
                    bs = true;
                    path = "$.bs";
                    json.Read();
                    if (json.TokenType == JsonTokenType.Null)
                        continue;
                    Expect(ref json, JsonTokenType.StartArray, number, path);
                    for (b = 0; json.Read() && json.TokenType != JsonTokenType.EndArray; b++)
                    {
                        if (json.TokenType == JsonTokenType.Null)
                            throw Bad(number, $"$.bs[{b}] is null: each B is an object such as {{\"data\": \"y\"}}.");
                        if (json.TokenType != JsonTokenType.StartObject)
                            Expect(ref json, JsonTokenType.StartObject, number, $"$.bs[{b}]");
                        int? bText = null, bId = null;
                        bool bData = false, parent = false;
                        while (json.Read() && json.TokenType == JsonTokenType.PropertyName)
                        {
                            if (json.ValueTextEquals("data"u8) && !bData)
                            {
                                bData = true;
                                json.Read();
                                bText = ReadText(ref json, number, null, ref text, b);
                            }
                            else if (json.ValueTextEquals("id"u8) && bId is null)
                            {
                                json.Read();
                                bId = ReadId(ref json, number, $"$.bs[{b}].id");
                                if (!ids.Bs.Add(bId.Value))
                                    throw Bad(number, $"B id {bId} ($.bs[{b}].id) appears twice in the body: each row is named once.");
                                bsNamed++;
                            }
                            else if (json.ValueTextEquals("aId"u8) && !parent)
                            {
                                parent = true;
                                json.Read();
                                if (json.TokenType == JsonTokenType.Null)
                                    throw Bad(number, $"$.bs[{b}].aId is null: a B's aId, when given, is the id of the A on its line.");
                                ids.ParentIds.Add(ReadId(ref json, number, $"$.bs[{b}].aId"));
                            }
                            else
                                throw NotAField(number, $"$.bs[{b}].{json.GetString()}");
                        }
                        if (bText is { } length)
                            rows.AddB(bId ?? 0, text.AsSpan(0, length));
                        else
                            rows.AddNullB(bId ?? 0);
                    }
                    b = -1;
                }
                else
                    throw NotAField(number, $"$.{json.GetString()}");
            }
            rows.EndA();
            // Anything after the object is a second value on the line: the reader rejects it as invalid JSON.
            json.Read();
            CheckIds(number, id, rows.LastBs, bsNamed, ids);
        }
        catch (JsonException e)
        {
            throw Bad(number, $"it is not valid JSON (byte {e.BytePositionInLine + 1}): {e.Message.Split(" LineNumber:")[0]}");
        }
        catch (InvalidOperationException)
        {
            // An escape that is no Unicode text (a lone UTF-16 surrogate): nothing PostgreSQL could store.
            throw Bad(number, $"the string at {(b >= 0 ? $"$.bs[{b}].data" : path)} is not valid UTF-8 text.");
        }
    }

    /// <summary>A line's ids against the body's: all named or none, each once, and a B's aId its A's id.</summary>
    static void CheckIds(int number, int? id, int bs, int bsNamed, BodyIds ids)
    {
        var named = id is not null;
        if (ids.Named is null)
            (ids.Named, ids.FirstLine) = (named, number);
        else if (ids.Named != named)
            throw Bad(number, named
                ? $"it names an id, but line {ids.FirstLine} named none: a body names every id, each A's and each B's, or none, "
                    + "because the ids the sequences give the unnamed rows could collide with ids named later."
                : $"it names no id, but line {ids.FirstLine} did: a body names every id, each A's and each B's, or none, "
                    + "because the ids the sequences give the unnamed rows could collide with ids named later.");
        if (bsNamed != (named ? bs : 0))
            throw Bad(number, named
                ? "its A has an id but not all of its Bs do: a body names every id, each A's and each B's, or none."
                : "a B names an id but its A does not: a body names every id, each A's and each B's, or none.");
        foreach (var parent in ids.ParentIds)
            if (parent != id)
                throw Bad(number, $"a B's aId is {parent}, not the id of the A on its line ({(named ? id : "none")}): a B belongs "
                    + "to the A whose line holds it.");
        if (named && !ids.As.Add(id!.Value))
            throw Bad(number, $"A id {id} appears twice in the body: each row is named once.");
    }

    /// <summary>An id: a positive 32-bit integer.</summary>
    static int ReadId(ref Utf8JsonReader json, int number, string path) =>
        json.TokenType == JsonTokenType.Number && json.TryGetInt32(out var id) && id > 0
            ? id
            : throw Bad(number, $"the value at {path} is not an id: ids are positive 32-bit integers (1 to 2,147,483,647).");

    /// <summary>A string's UTF-8 bytes into <paramref name="text"/> (their length), or null for a JSON null.</summary>
    /// <remarks>The path is <paramref name="path"/>, or that of the data of B number <paramref name="b"/>.</remarks>
    static int? ReadText(ref Utf8JsonReader json, int number, string? path, ref byte[] text, int b = -1)
    {
        if (json.TokenType == JsonTokenType.Null)
            return null;
        if (json.TokenType != JsonTokenType.String)
            Expect(ref json, JsonTokenType.String, number, path ?? $"$.bs[{b}].data");
        var escaped = json.HasValueSequence ? (int)json.ValueSequence.Length : json.ValueSpan.Length;
        if (text.Length < escaped)
            text = new byte[Math.Max(escaped, text.Length * 2)];
        var length = json.CopyString(text);
        var utf8 = text.AsSpan(0, length);
        if (!Utf8.IsValid(utf8))
            throw Bad(number, $"the string at {path ?? $"$.bs[{b}].data"} is not valid UTF-8 text.");
        if (utf8.Contains((byte)0))
            throw Bad(number, $"{path ?? $"$.bs[{b}].data"} contains the NUL character (U+0000): PostgreSQL text cannot store it.");
        return length;
    }

    static void Expect(ref Utf8JsonReader json, JsonTokenType expected, int number, string path)
    {
        if (json.TokenType != expected)
            throw Bad(number, $"the value at {path} has the wrong type: a line is an object such as {Example}, "
                + "data a string or null, bs an array of such B objects.");
    }

    static BadHttpRequestException NotAField(int number, string path) =>
        Bad(number, $"{path} is not a field of an A or a B (or appears twice): a line holds only id, data and bs, a B only id, "
            + "aId and data (as GET /a/stream writes them).");

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
