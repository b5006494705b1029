// Usage: FeedLoad API_URL CONNECTION_STRING API_PID [rate=1000] [seconds=20] [subscribers=50]
// Opens the subscribers, then commits `rate` one-row transactions per second into a (plain SQL, four writers) for
// `seconds`, and prints: p50_ms p99_ms p999_ms max_ms received expected rss_start_mb rss_end_mb rss_peak_mb.
// Latency runs from the moment a writer sends its INSERT (autocommit: the commit is part of it) to the moment a
// subscriber has read the event, over every (event, subscriber) pair; the first 3 seconds warm up and are not counted.
using System.Buffers.Text;
using System.Diagnostics;
using Npgsql;

var api = new Uri(args[0]);
var connectionString = args[1];
var apiPid = int.Parse(args[2]);
var rate = args.Length > 3 ? int.Parse(args[3]) : 1000;
var seconds = args.Length > 4 ? int.Parse(args[4]) : 20;
var subscriberCount = args.Length > 5 ? int.Parse(args[5]) : 50;
const int warmup = 3;

var total = rate * (seconds + warmup);
var sent = new long[total];
var committed = new long[total];
var received = new long[subscriberCount][];
using var stop = new CancellationTokenSource();
using var http = new HttpClient { BaseAddress = api, Timeout = Timeout.InfiniteTimeSpan };

var subscribers = new List<Task>();
for (var s = 0; s < subscriberCount; s++)
{
    var mine = received[s] = new long[total];
    var response = await http.GetAsync("/a/changes", HttpCompletionOption.ResponseHeadersRead);
    response.EnsureSuccessStatusCode();
    var body = await response.Content.ReadAsStreamAsync();
    subscribers.Add(Task.Run(async () =>
    {
        // The bytes as they come, scanned for `"data":"s<seq>"` (data: {"id":123,"data":"s42"}): no strings. This load
        // shares the API's 2 cores, and reading lines through a StreamReader took 13.0-13.9 s of its CPU a run, bytes
        // 11.3-11.7 s (2 pairs; issue 20).
        var buffer = new byte[64 * 1024];
        var kept = 0;
        try
        {
            int read;
            while ((read = await body.ReadAsync(buffer.AsMemory(kept), stop.Token)) > 0)
            {
                var now = Stopwatch.GetTimestamp();
                var rest = buffer.AsSpan(0, kept + read);
                while (rest.IndexOf(Marker) is var at and >= 0)
                {
                    var digits = rest[(at + Marker.Length)..];
                    var end = digits.IndexOf((byte)'"');
                    if (end < 0)
                    {
                        rest = rest[at..];                 // its number is still on its way
                        break;
                    }
                    if (Utf8Parser.TryParse(digits[..end], out int seq, out _) && seq < total)
                        mine[seq] = now;
                    rest = digits[(end + 1)..];
                }
                if (rest.IndexOf(Marker) < 0)
                    rest = rest[Math.Max(0, rest.Length - (Marker.Length - 1))..];   // a marker's start, maybe
                rest.CopyTo(buffer);
                kept = rest.Length;
            }
        }
        catch (OperationCanceledException) { }
    }));
}

await using var source = NpgsqlDataSource.Create(connectionString);
var clock = Stopwatch.StartNew();
const int writers = 4;
double RssMb() => File.ReadLines($"/proc/{apiPid}/status").First(l => l.StartsWith("VmRSS:")).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1] is var kb ? long.Parse(kb) / 1024.0 : 0;
double rssStart = 0, rssPeak = 0;
var sampler = Task.Run(async () =>
{
    await Task.Delay(TimeSpan.FromSeconds(warmup));
    rssStart = rssPeak = RssMb();
    while (!stop.IsCancellationRequested)
    {
        rssPeak = Math.Max(rssPeak, RssMb());
        await Task.Delay(200);
    }
});
var writing = Enumerable.Range(0, writers).Select(w => Task.Run(async () =>
{
    await using var connection = await source.OpenConnectionAsync();
    await using var insert = new NpgsqlCommand("INSERT INTO a (data) VALUES ($1)", connection) { Parameters = { new() { Value = "" } } };
    await insert.PrepareAsync();
    for (var seq = w; seq < total; seq += writers)
    {
        var due = TimeSpan.FromSeconds((double)seq / rate) - clock.Elapsed;
        if (due > TimeSpan.Zero)
            await Task.Delay(due);
        insert.Parameters[0].Value = "s" + seq;
        sent[seq] = Stopwatch.GetTimestamp();
        await insert.ExecuteNonQueryAsync();
        committed[seq] = Stopwatch.GetTimestamp();
    }
})).ToArray();
await Task.WhenAll(writing);
await Task.Delay(TimeSpan.FromSeconds(2));         // the last events' way to the subscribers
var rssEnd = RssMb();
await stop.CancelAsync();
await Task.WhenAll(subscribers);
await sampler;

var first = rate * warmup;
var latencies = new List<double>();
var commits = new List<double>();
var got = 0;
for (var seq = first; seq < total; seq++)
    commits.Add(Stopwatch.GetElapsedTime(sent[seq], committed[seq]).TotalMilliseconds);
commits.Sort();
Console.Error.WriteLine($"commit p50 {commits[commits.Count / 2]:F1} p99 {commits[(int)(commits.Count * 0.99)]:F1} max {commits[^1]:F1}");
foreach (var mine in received)
    for (var seq = first; seq < total; seq++)
        if (mine[seq] != 0)
        {
            got++;
            latencies.Add(Stopwatch.GetElapsedTime(sent[seq], mine[seq]).TotalMilliseconds);
        }
latencies.Sort();
double At(double q) => latencies.Count == 0 ? double.NaN : latencies[(int)Math.Min(latencies.Count - 1, q * latencies.Count)];
Console.WriteLine(FormattableString.Invariant(
    $"{At(0.50):F1} {At(0.99):F1} {At(0.999):F1} {latencies.LastOrDefault():F1} {got} {(total - first) * subscriberCount} {rssStart:F1} {rssEnd:F1} {rssPeak:F1} {clock.Elapsed.TotalSeconds:F1}"));

partial class Program
{
    static ReadOnlySpan<byte> Marker => "\"data\":\"s"u8;
}
