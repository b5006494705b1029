using Npgsql;
using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.IO.Pipelines;
using AsyncOrmApi.Data;
using Microsoft.Extensions.Options;
using Npgsql.Replication.PgOutput.Messages;

namespace AsyncOrmApi.Changes;


/// <summary>
/// The changes to <c>a</c> and <c>b</c> committed by any writer, read from PostgreSQL's logical replication (pgoutput,
/// binary) by one reader per process and fanned out to every <c>GET /a/changes</c> through a <see cref="ChangeLog"/>.
/// The slot is temporary: it exists while the process has subscribers (and <c>ChangeFeed:IdleSeconds</c> after the
/// last leaves, so a reconnect finds its window), and PostgreSQL drops it with the reader's connection, also when the
/// process is killed. So no slot holds WAL after the API stops, and a resume across a restart answers 409.
/// </summary>
public sealed partial class ChangeFeed : IAsyncDisposable
{
    /// <summary>Prefix of the logical message POST /reset writes in its transaction, so the feed says `reset` at once.</summary>
    public const string ResetMessage = "asyncormapi.reset";

    readonly ILogger<ChangeFeed> _log;
    readonly IHostApplicationLifetime _life;

    public ChangeFeed(IConfiguration config, IOptions<ChangeFeedOptions> options, ILogger<ChangeFeed> log, IHostApplicationLifetime life,
        IMeterFactory meters)
    {
        _log = log;
        _life = life;
        _connectionString = Database.ConnectionString(config);
        var o = options.Value;
        (_publication, _window, _windowBytes, _maxLag) = (o.Publication, o.Window, o.WindowBytes, o.MaxLag);
        _idle = TimeSpan.FromSeconds(o.IdleSeconds);
        Heartbeat = TimeSpan.FromSeconds(o.HeartbeatSeconds);

        // The window's fill, against its bounds: an operator sees the byte bound coming before resumes start to 409.
        var meter = meters.Create("AsyncOrmApi");
        meter.CreateObservableGauge("asyncormapi.changefeed.window.bytes", () => Window().Bytes, "By",
            "Event data the change feed keeps for resumes now (bounded by ChangeFeed:WindowBytes).");
        meter.CreateObservableGauge("asyncormapi.changefeed.window.events", () => Window().Events, "{event}",
            "Events the change feed keeps for resumes now (bounded by ChangeFeed:Window).");
        meter.CreateObservableGauge("asyncormapi.changefeed.window.limit_bytes", () => _windowBytes, "By",
            "ChangeFeed:WindowBytes.");
        meter.CreateObservableGauge("asyncormapi.changefeed.subscribers", () => Window().Subscribers, "{subscriber}",
            "Subscribers reading the change feed's window now.");
    }

    readonly string _connectionString;
    readonly string _publication;
    readonly int _window;
    readonly long _windowBytes;
    readonly int _maxLag;
    readonly TimeSpan _idle;
    public TimeSpan Heartbeat { get; }

    readonly Lock _gate = new();
    Task<ChangeLog>? _current;                           // the running reader's log, once its slot exists
    CancellationTokenSource? _stop;                      // stops the running reader
    Task _reading = Task.CompletedTask;                  // the running reader, until its connection (and slot) is gone
    long _lastUse = Environment.TickCount64;
    string _primary = "";                                // the connection string of the server the reader reads
    // The feed's own queries (setup, a subscription's snapshot, id checks), per primary it has read: named, so that /metrics
    // labels the pool "asyncormapi-changefeed" and not by its connection string. A failover adds one. Pooled, so that no
    // subscription opens a session of its own (docs/design.md, "Bounds per resource"); a pooled
    // connection that did not survive a PostgreSQL restart is dropped and the query tried once more (QueryAsync).
    readonly ConcurrentDictionary<string, NpgsqlDataSource> _sources = new();

    NpgsqlDataSource SourceFor(string connectionString) => _sources.GetOrAdd(connectionString, cs =>
        new NpgsqlDataSourceBuilder(new NpgsqlConnectionStringBuilder(cs) { SearchPath = "public", MaxPoolSize = 4 }.ConnectionString)
        {
            Name = "asyncormapi-changefeed",
        }.Build());

    /// <summary>Runs <paramref name="query"/> on a pooled connection to the primary; again on a fresh one if that one was broken.</summary>
    async Task<T> QueryAsync<T>(Func<NpgsqlConnection, Task<T>> query, CancellationToken ct)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await using var connection = await SourceFor(_primary).OpenConnectionAsync(ct);
                return await query(connection);
            }
            // A connection the server cut while it idled (a restart's 57P01, or a broken socket); not a query's own error.
            catch (NpgsqlException e) when (attempt == 1 && !ct.IsCancellationRequested
                && (e is not PostgresException { SqlState: var state } || state.StartsWith("57") || state.StartsWith("08")))
            {
                SourceFor(_primary).Clear();
            }
        }
    }

    /// <summary>The highest WAL position known to exist: what the reader has received, or a check found.</summary>
    ulong _knownWal;

    /// <summary>
    /// Subscribes after what <paramref name="since"/> names (an event's id, a read's position, or nothing: now), starting
    /// the reader if none runs. Null when what followed it is not known here: the client must refetch.
    /// </summary>
    public async Task<(ChangeLog Log, ChangeLog.Subscriber Subscriber)?> SubscribeAsync(Since since, Action cut, CancellationToken ct)
    {
        for (var attempt = 1; ; attempt++)
        {
            var changes = await RunningLogAsync(ct);
            // Without an id: from now, exactly, as a read now would see it; not from wherever the reader has got to, which
            // may still be behind commits made before the subscription.
            if (since is { After: null, Position: null })
                since = since with { Position = ChangePosition.Of(changes.Source, await SnapshotAsync(ct)) };
            var lsn = since.After?.Lsn ?? since.Position?.Lsn;
            var from = since.After?.Source ?? since.Position?.Source;
            if (lsn is { } position && from == changes.Source && position > changes.Newest.Lsn && !await IsPastAsync(position, ct))
                return null;                               // a position this server has not reached: not one of its ids
            if (changes.Subscribe(since, cut) is { } subscriber)
                return (changes, subscriber);
            if (!changes.Ended || attempt == 3)
                return null;                               // else the reader stopped (idle) just now: start another
        }
    }

    /// <summary>
    /// The source of a read's <c>Change-Position</c>: the running log's, the reader started first if none runs, so that a
    /// subscription from the read finds its changes in the window. Null when the feed cannot run (wal_level, privileges)
    /// or its reader does not start within <see cref="PositionWait"/> (a slot waits for the writes in progress); the read
    /// then answers without a position. A failure is remembered for as long, so that reads do not each try again.
    /// </summary>
    public async Task<uint?> PositionSourceAsync(CancellationToken ct)
    {
        if (Environment.TickCount64 < Interlocked.Read(ref _noPositionUntil))
            return null;
        try
        {
            return (await RunningLogAsync(ct).WaitAsync(PositionWait, ct)).Source;
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            Interlocked.Exchange(ref _noPositionUntil, Environment.TickCount64 + (long)PositionWait.TotalMilliseconds);
            return null;
        }
    }

    /// <summary>How long a read waits for the feed's reader to start, and how long a failure to start is remembered.</summary>
    public static readonly TimeSpan PositionWait = TimeSpan.FromSeconds(2);

    long _noPositionUntil;

    /// <summary>The running log's size and subscribers; zeros while no reader runs.</summary>
    (long Events, long Bytes, int Subscribers) Window()
    {
        Task<ChangeLog>? current;
        lock (_gate)
            current = _current;
        if (current is not { IsCompletedSuccessfully: true, Result: { Ended: false } changes })
            return (0, 0, 0);
        var (events, bytes) = changes.Size;
        return (events, bytes, changes.Subscribers);
    }

    void Unsubscribe(ChangeLog changes, ChangeLog.Subscriber subscriber)
    {
        changes.Unsubscribe(subscriber);
        Interlocked.Exchange(ref _lastUse, Environment.TickCount64);
    }

    /// <summary>
    /// Writes one subscription's events to <paramref name="body"/>: <c>retry:</c> at once (so the response starts), then
    /// changes and heartbeats, until the client goes, the subscriber is cut or the slot ends.
    /// </summary>
    public async Task WriteAsync(ChangeLog changes, ChangeLog.Subscriber subscriber, PipeWriter body, CancellationToken ct)
    {
        try
        {
            // No data: EventSource dispatches nothing, but headers and the reconnection delay go out now.
            body.Write(OpeningFrame);
            await body.FlushAsync(ct);
            var batch = new Change[256];
            var sent = true;
            while (!ct.IsCancellationRequested)
            {
                var n = changes.Read(subscriber, batch, out var appended);
                if (n < 0)
                    return;                                // cut, or the slot ended: the client resumes with its last id
                if (n > 0)
                {
                    // Every change the cursor reaches, then one flush (each 64 KB at most, so a burst of large rows is
                    // not gathered whole): a transaction's changes cost one send per subscriber, not one per change.
                    var unflushed = 0;
                    for (var i = 0; i < n; i++)
                    {
                        body.Write(batch[i].Frame);
                        unflushed += batch[i].Frame.Length;
                        if (unflushed >= FlushBytes && i < n - 1)
                        {
                            if ((await body.FlushAsync(ct)).IsCompleted)
                                return;
                            unflushed = 0;
                        }
                    }
                    Array.Clear(batch, 0, n);
                    if ((await body.FlushAsync(ct)).IsCompleted)
                        return;
                    sent = true;
                    continue;
                }
                if (!sent)
                {
                    // A heartbeat tick with nothing sent since the last one: an event without data, which EventSource
                    // ignores (the SSE spec dispatches no event with an empty data buffer), as the feed always sent.
                    body.Write(HeartbeatFrame);
                    if ((await body.FlushAsync(ct)).IsCompleted)
                        return;
                }
                sent = false;
                // One wake-up for all subscribers per append or heartbeat tick: no timer per wait (a Task.Delay per
                // wait left 50,000 timers a second alive at 1,000 changes/s and 50 subscribers; script/bench). The
                // request's token ends the wait as soon as the client has gone, which frees its subscription's slot.
                await appended.WaitAsync(ct);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // The client has gone: nobody to tell.
        }
        finally
        {
            Unsubscribe(changes, subscriber);
        }
    }

    static readonly byte[] OpeningFrame = "data: \nretry: 2000\n\n"u8.ToArray(), HeartbeatFrame = "data: \n\n"u8.ToArray();

    const int FlushBytes = 64 * 1024;

    async Task<ChangeLog> RunningLogAsync(CancellationToken ct)
    {
        Task<ChangeLog> current;
        lock (_gate)
        {
            if (_current is null || _current.IsFaulted || _current.IsCanceled || _current.IsCompletedSuccessfully && _current.Result.Ended)
            {
                _stop?.Cancel();
                _stop = CancellationTokenSource.CreateLinkedTokenSource(_life.ApplicationStopping);
                var started = new TaskCompletionSource<ChangeLog>(TaskCreationOptions.RunContinuationsAsynchronously);
                _current = started.Task;
                _reading = ReadAsync(started, _stop);
            }
            current = _current;
            Interlocked.Exchange(ref _lastUse, Environment.TickCount64);
        }
        return await current.WaitAsync(ct);
    }

    /// <summary>
    /// How long the shutdown waits for the reader's connection to close. A process that did not exit on SIGTERM (script/bench,
    /// run 21; issue 20) was waiting here, in the host's disposal, which no shutdown timeout bounds: its reader, cancelled,
    /// was still in Npgsql's replication stream 18 minutes on (dotnet-dump: ReadAsync awaiting PgOutputAsyncEnumerable,
    /// no thread working), while PostgreSQL, told to stop at the same moment, did not stop either. Killing the API let
    /// both end.
    /// </summary>
    static readonly TimeSpan ReaderCloseWait = TimeSpan.FromSeconds(10);

    /// <summary>
    /// On shutdown: stops the reader and waits until its connection is closed, which drops the slot; at most
    /// <see cref="ReaderCloseWait"/>, after which the process exits without it, and its socket's end lets PostgreSQL drop the
    /// slot, a temporary one.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        Task reading;
        lock (_gate)
        {
            _stop?.Cancel();
            reading = _reading;
        }
        try
        {
            await reading.WaitAsync(ReaderCloseWait);      // ReadAsync catches everything itself
        }
        catch (TimeoutException)
        {
            _log.LogWarning("The change feed's replication connection did not close within {Seconds} s of the stop: the API "
                + "stops without it, and PostgreSQL drops its temporary slot once the connection ends", ReaderCloseWait.TotalSeconds);
        }
        foreach (var source in _sources.Values)
            await source.DisposeAsync();
    }
}


/// <summary>The database's wal_level is not logical: the feed cannot run, everything else can.</summary>
public sealed class ChangeFeedUnavailableException() : Exception(
    "The change feed needs PostgreSQL's wal_level=logical (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL).");
