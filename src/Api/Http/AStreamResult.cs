using System.Buffers;
using System.Text.Json;
using AsyncOrmApi.Data;
using Microsoft.AspNetCore.Http.Metadata;
using Microsoft.Net.Http.Headers;

namespace AsyncOrmApi.Http;

/// <summary>
/// Writes A rows as they come from the database, as one JSON array or, when the client accepts
/// <c>application/x-ndjson</c>, one A per line. Nothing is buffered beyond one flush window. The rows are read with a
/// turn at PostgreSQL, given back while a flush waits for the client.
/// </summary>
public sealed class AStreamResult(Func<FetchTurn, IAsyncEnumerable<ADto>> source) : IResult, IEndpointMetadataProvider
{
    const string NdJson = NdJsonLines.MediaType;
    // 64 KB windows streamed 300,000 A 8% faster than 16 KB ones (medians of 7, alternating; issue 20): each flush hands the
    // window to Kestrel's socket writer and back.
    const int FlushBytes = 64 * 1024, WindowCapacity = FlushBytes + 4096;
    /// <summary>Bs from which an A is written straight into the response: ~45 KB of JSON.</summary>
    const int LargeA = 1_000;

    /// <summary>
    /// Where every stream's work runs: on at most all cores but one at a time, so that short requests and probes always
    /// find a thread-pool thread and a core free, however many streams are open. A bulkhead, not a limit on streams: each
    /// still runs, the streams share their cores in turn (Task.Yield after each window lines them up here).
    /// </summary>
    static readonly TaskScheduler Streams =
        new ConcurrentExclusiveSchedulerPair(TaskScheduler.Default, Math.Max(1, Environment.ProcessorCount - 1)).ConcurrentScheduler;

    public Task ExecuteAsync(HttpContext http) =>
        Task.Factory.StartNew(() => WriteAsync(http), CancellationToken.None, TaskCreationOptions.DenyChildAttach, Streams).Unwrap();

    async Task WriteAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        using var turn = new FetchTurn();
        await using var rows = source(turn).GetAsyncEnumerator(ct);
        // The query runs before anything is written, so a failure to start it is still an ordinary error
        // response (503 when PostgreSQL is down) rather than a broken stream.
        var more = await rows.MoveNextAsync();

        var ndjson = http.Request.GetTypedHeaders().Accept.Any(a => a.MediaType.Equals(NdJson, StringComparison.OrdinalIgnoreCase));
        var response = http.Response;
        response.ContentType = ndjson ? NdJson : "application/json; charset=utf-8";
        var body = response.BodyWriter;
        // The window is written here and copied into the response once it is full: every write straight to Kestrel's pipe
        // takes its lock, and per A that was ~8% of a stream's CPU (perf; issue 20).
        var window = new ArrayBufferWriter<byte>(WindowCapacity);
        await using var json = new Utf8JsonWriter(window, new JsonWriterOptions { SkipValidation = true, Encoder = MinimalJsonEncoder.Instance });
        try
        {
            // Each A is a JSON value of its own (the writer is reset after it, so that it can move to a new window); the
            // array's brackets and commas, or NDJSON's newlines, are written around them.
            if (!ndjson)
                window.Write("["u8);
            for (var first = true; more; first = false, more = await rows.MoveNextAsync())
            {
                if (!first && !ndjson)
                    window.Write(","u8);
                if (rows.Current.Bs.Count >= LargeA)
                {
                    // Straight into the response, after the window: the window would grow to hold it (an A of 340,000 Bs
                    // is 11 MB: four streams of it grew the process by 111 MB through the window, 67 MB like this).
                    body.Write(window.WrittenSpan);
                    window.ResetWrittenCount();
                    json.Reset(body);
                }
                JsonSerializer.Serialize(json, rows.Current, WireJson.Default.ADto);
                json.Flush();
                json.Reset(window);
                if (ndjson)
                    window.Write("\n"u8);
                // The first row goes out at once; after that, full windows only. The window is counted here, not read from
                // body.UnflushedBytes: once a client has gone, Kestrel drops the writes and that stays 0, so the loop never
                // flushed or yielded again. Each stream then held a thread-pool thread until its whole result was read, the
                // aborts that would stop them queued behind them (115-133 work items pending, 2 done a second), and at 40-50
                // streams whose clients left at once /health/live took 15-28 s (issue 16).
                if (first || window.WrittenCount >= FlushBytes)
                {
                    body.Write(window.WrittenSpan);
                    window.ResetWrittenCount();
                    // An A of long data grew the window; the next one starts small again.
                    if (window.Capacity > 2 * WindowCapacity)
                        json.Reset(window = new ArrayBufferWriter<byte>(WindowCapacity));
                    var flush = body.FlushAsync(ct);
                    if (!flush.IsCompleted)
                        turn.Give();                       // a slow client holds back no other stream
                    if (await flush is { IsCompleted: true } or { IsCanceled: true })
                        break;
                    // Kestrel takes those writes without a word until the abort reaches the request, through the thread
                    // pool's global queue; a stream's flushes complete on its local one, ahead of it. Yielding after each
                    // window lets the abort, and every other request, take its turn; it costs one work item per window.
                    await Task.Yield();
                }
                if (ct.IsCancellationRequested)
                    return;                                // the client has gone: nobody to tell, nothing to throw

            }
            if (!ndjson)
                window.Write("]"u8);
            body.Write(window.WrittenSpan);
            await body.FlushAsync(ct);
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            // Too late for an error status, and a clean end would pass a cut-off body for a whole one
            // (aspnetcore#32483): the connection is reset, which every client sees as a failed response.
            http.RequestServices.GetRequiredService<ILogger<AStreamResult>>()
                .LogError(e, "GET {Path} failed after its first bytes; the response was aborted.", http.Request.Path);
            http.Abort();
        }
    }

    public static void PopulateMetadata(System.Reflection.MethodInfo method, EndpointBuilder builder) =>
        builder.Metadata.Add(new ProducesResponseTypeMetadata(StatusCodes.Status200OK, typeof(IEnumerable<ADto>),
            ["application/json", NdJson]));
}
