using System.Net;
using System.Text.Json;
using System.Threading.Channels;

namespace AsyncOrmApi.Tests;

/// <summary>One event of <c>GET /a/changes</c>.</summary>
public sealed record SseEvent(string Type, string? Id, string Data)
{
    public JsonElement Row => JsonDocument.Parse(Data).RootElement;
    public string? RowData => Row.TryGetProperty("data", out var d) ? d.GetString() : null;
    public override string ToString() => $"{Type} {Data}";
}

/// <summary>
/// A subscriber of <c>GET /a/changes</c>: parses the stream as EventSource does (events without data, the feed's
/// heartbeats and its opening `retry:`, are counted, not queued) on a background task.
/// </summary>
public sealed class Sse : IAsyncDisposable
{
    readonly Channel<SseEvent> _events = Channel.CreateUnbounded<SseEvent>();
    readonly CancellationTokenSource _stop = new();
    Task _reading = Task.CompletedTask;

    public required HttpResponseMessage Response { get; init; }
    public int Empty { get; private set; }
    public int? Retry { get; private set; }
    public bool Ended { get; private set; }

    public static async Task<Sse> OpenAsync(HttpClient client, string? lastEventId = null, string query = "")
    {
        var request = new HttpRequestMessage(HttpMethod.Get, "/a/changes" + query);
        request.Headers.Accept.ParseAdd("text/event-stream");
        if (lastEventId is not null)
            request.Headers.TryAddWithoutValidation("Last-Event-ID", lastEventId);
        var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        var sse = new Sse { Response = response };
        if (response.StatusCode == HttpStatusCode.OK)
            sse._reading = sse.ReadAsync(await response.Content.ReadAsStreamAsync());
        return sse;
    }

    async Task ReadAsync(Stream body)
    {
        using var reader = new StreamReader(body);
        string type = "message", data = "";
        string? id = null;
        try
        {
            while (await reader.ReadLineAsync(_stop.Token) is { } line)
            {
                if (line.Length == 0)
                {
                    if (data.Length > 0)
                        await _events.Writer.WriteAsync(new SseEvent(type, id, data));
                    else
                        Empty++;
                    (type, data, id) = ("message", "", null);
                    continue;
                }
                var colon = line.IndexOf(':');
                var (field, value) = colon < 0 ? (line, "") : (line[..colon], line[(colon + 1)..].TrimStart(' '));
                switch (field)
                {
                    case "event": type = value; break;
                    case "id": id = value; break;
                    case "data": data += data.Length > 0 ? "\n" + value : value; break;
                    case "retry": Retry = int.Parse(value); break;
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or HttpRequestException)
        {
        }
        Ended = true;
        _events.Writer.TryComplete();
    }

    /// <summary>The next <paramref name="count"/> events; fails if they do not come within 10 s.</summary>
    public async Task<List<SseEvent>> TakeAsync(int count)
    {
        var got = new List<SseEvent>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            while (got.Count < count)
                got.Add(await _events.Reader.ReadAsync(timeout.Token));
        }
        catch (Exception e) when (e is OperationCanceledException or ChannelClosedException)
        {
            Assert.Fail($"expected {count} events, got {got.Count} ({(Ended ? "stream ended" : "no more within 10 s")}): {string.Join(" | ", got.TakeLast(8).Select(e => e.ToString()[..Math.Min(100, e.ToString().Length)]))}");
        }
        return got;
    }

    /// <summary>The events that come until none has come for <paramref name="quiet"/> (at most <paramref name="most"/> in all).</summary>
    public async Task<List<SseEvent>> TakeUntilQuietAsync(TimeSpan quiet, TimeSpan most)
    {
        var got = new List<SseEvent>();
        using var all = new CancellationTokenSource(most);
        while (!all.IsCancellationRequested)
        {
            using var pause = CancellationTokenSource.CreateLinkedTokenSource(all.Token);
            pause.CancelAfter(quiet);
            try
            {
                got.Add(await _events.Reader.ReadAsync(pause.Token));
            }
            catch (Exception e) when (e is OperationCanceledException or ChannelClosedException)
            {
                break;
            }
        }
        return got;
    }

    /// <summary>The events that arrived until the stream ended (within 30 s).</summary>
    public async Task<List<SseEvent>> UntilEndAsync()
    {
        await _reading.WaitAsync(TimeSpan.FromSeconds(30));
        var got = new List<SseEvent>();
        while (_events.Reader.TryRead(out var e))
            got.Add(e);
        return got;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        Response.Dispose();
        await _reading.ContinueWith(_ => { });
    }
}
