using System.Buffers;
using System.Text.Json;
using Microsoft.AspNetCore.Http.Metadata;
using Microsoft.Net.Http.Headers;

namespace AsyncOrmApi.Http;

/// <summary>
/// Writes A rows as they come from the database, as one JSON array or, when the client accepts
/// <c>application/x-ndjson</c>, one A per line. Nothing is buffered beyond one flush window.
/// </summary>
public sealed class AStreamResult(IAsyncEnumerable<ADto> source) : IResult, IEndpointMetadataProvider
{
    const string NdJson = NdJsonLines.MediaType;
    const int FlushBytes = 16 * 1024;

    public async Task ExecuteAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        await using var rows = source.GetAsyncEnumerator(ct);
        // The query runs before anything is written, so a failure to start it is still an ordinary error
        // response (503 when PostgreSQL is down) rather than a broken stream.
        var more = await rows.MoveNextAsync();

        var ndjson = http.Request.GetTypedHeaders().Accept.Any(a => a.MediaType.Equals(NdJson, StringComparison.OrdinalIgnoreCase));
        var response = http.Response;
        response.ContentType = ndjson ? NdJson : "application/json; charset=utf-8";
        var body = response.BodyWriter;
        await using var json = new Utf8JsonWriter(body, new JsonWriterOptions { SkipValidation = true });
        try
        {
            if (!ndjson)
                json.WriteStartArray();
            for (var first = true; more; first = false, more = await rows.MoveNextAsync())
            {
                JsonSerializer.Serialize(json, rows.Current, WireJson.Default.ADto);
                json.Flush();
                if (ndjson)
                {
                    body.Write("\n"u8);
                    json.Reset();
                }
                // The first row goes out at once; after that, full windows only.
                if (first || body.UnflushedBytes >= FlushBytes)
                {
                    if (await body.FlushAsync(ct) is { IsCompleted: true } or { IsCanceled: true })
                        break;
                    // Once a client has gone, Kestrel takes its writes without a word until the abort reaches the request,
                    // through the thread pool's global queue; a stream's flushes complete on its local one, ahead of it.
                    // 50 streams whose clients left at once so serialized their tables into nothing for 2-5 s, and
                    // /health/live waited as long (issue 16). Yielding after each window lets the abort, and every other
                    // request, take its turn; it costs one work item per 16 KB.
                    await Task.Yield();
                }
                if (ct.IsCancellationRequested)
                    return;                                // the client has gone: nobody to tell, nothing to throw

            }
            if (!ndjson)
                json.WriteEndArray();
            await json.FlushAsync(ct);
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
