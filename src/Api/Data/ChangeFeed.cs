using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.Metrics;
using System.Net.ServerSentEvents;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Npgsql;
using Npgsql.Replication;
using Npgsql.Replication.PgOutput;
using Npgsql.Replication.PgOutput.Messages;

namespace AsyncOrmApi.Data;

/// <summary>
/// The changes to <c>a</c> and <c>b</c> committed by any writer, read from PostgreSQL's logical replication (pgoutput,
/// binary) by one reader per process and fanned out to every <c>GET /a/changes</c> through a <see cref="ChangeLog"/>.
/// The slot is temporary: it exists while the process has subscribers (and <c>ChangeFeed:IdleSeconds</c> after the
/// last leaves, so a reconnect finds its window), and PostgreSQL drops it with the reader's connection, also when the
/// process is killed. So no slot holds WAL after the API stops, and a resume across a restart answers 409.
/// </summary>
public sealed class ChangeFeed : IAsyncDisposable
{
    /// <summary>Prefix of the logical message POST /reset writes in its transaction, so the feed says `reset` at once.</summary>
    public const string ResetMessage = "asyncormapi.reset";

    public const string WindowBytesSetting = "ChangeFeed:WindowBytes";
    public const long DefaultWindowBytes = 64L * 1024 * 1024;

    readonly ILogger<ChangeFeed> _log;
    readonly IHostApplicationLifetime _life;

    public ChangeFeed(IConfiguration config, ILogger<ChangeFeed> log, IHostApplicationLifetime life, IMeterFactory meters)
    {
        _log = log;
        _life = life;
        _connectionString = Database.ConnectionString(config);
        _publication = config.GetValue("ChangeFeed:Publication", "asyncormapi_changes")!;
        _window = config.GetValue("ChangeFeed:Window", 10_000);
        _windowBytes = config.GetValue(WindowBytesSetting, DefaultWindowBytes);
        _maxLag = config.GetValue("ChangeFeed:MaxLag", 5_000);
        _idle = TimeSpan.FromSeconds(config.GetValue("ChangeFeed:IdleSeconds", 300));
        Heartbeat = TimeSpan.FromSeconds(config.GetValue("ChangeFeed:HeartbeatSeconds", 15));

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

    /// <summary>
    /// Subscribes after <paramref name="after"/> (null: at the live head), starting the reader if none runs. Null when
    /// what followed <paramref name="after"/> is not known here: the client must refetch.
    /// </summary>
    public async Task<(ChangeLog Log, ChangeLog.Subscriber Subscriber)?> SubscribeAsync(ChangeId? after, Action cut, CancellationToken ct)
    {
        for (var attempt = 1; ; attempt++)
        {
            var changes = await RunningLogAsync(ct);
            if (after is { } id && id.Source == changes.Source && id > changes.Newest && !await IsPastAsync(id, ct))
                return null;                               // a position this server has not reached: not one of its ids
            if (changes.Subscribe(after, cut) is { } subscriber)
                return (changes, subscriber);
            if (!changes.Ended || attempt == 3)
                return null;                               // else the reader stopped (idle) just now: start another
        }
    }

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

    /// <summary>The events of one subscription: `retry:` at once (so the response starts), then changes and heartbeats.</summary>
    public async IAsyncEnumerable<SseItem<byte[]>> EventsAsync(ChangeLog changes, ChangeLog.Subscriber subscriber,
        [EnumeratorCancellation] CancellationToken ct)
    {
        try
        {
            // No data: EventSource dispatches nothing, but headers and the reconnection delay go out now.
            yield return new SseItem<byte[]>([], null) { ReconnectionInterval = TimeSpan.FromSeconds(2) };
            var batch = new Change[256];
            var sent = true;
            while (!ct.IsCancellationRequested)
            {
                var n = changes.Read(subscriber, batch, out var appended);
                if (n < 0)
                    yield break;                           // cut, or the slot ended: the client resumes with its last id
                for (var i = 0; i < n; i++)
                    yield return batch[i].Item;
                if (n > 0)
                {
                    sent = true;
                    continue;
                }
                if (!sent)
                    // A heartbeat tick with nothing sent since the last one. TypedResults.ServerSentEvents writes no
                    // comments; an event without data is what EventSource ignores likewise (the SSE spec dispatches
                    // no event with an empty data buffer).
                    yield return new SseItem<byte[]>([], null);
                sent = false;
                // One wake-up for all subscribers per append or heartbeat tick: no timer per wait (a Task.Delay per
                // wait left 50,000 timers a second alive at 1,000 changes/s and 50 subscribers; script/bench). The
                // request's token ends the wait as soon as the client has gone, which frees its subscription's slot.
                await appended.WaitAsync(ct);
            }
        }
        finally
        {
            Unsubscribe(changes, subscriber);
        }
    }

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

    /// <summary>The one reader: creates the slot, then turns pgoutput's messages into events until stopped or broken.</summary>
    async Task ReadAsync(TaskCompletionSource<ChangeLog> started, CancellationTokenSource stopper)
    {
        var stop = stopper.Token;
        ChangeLog? changes = null;
        try
        {
            _primary = await PrimaryAsync(stop);
            await using var connection = new LogicalReplicationConnection(_primary);
            await connection.Open(stop);
            var system = await connection.IdentifySystem(stop);
            var tables = await PrepareAsync(stop);
            var slot = await connection.CreatePgOutputReplicationSlot($"asyncormapi_{Guid.NewGuid():N}"[..32],
                temporarySlot: true, slotSnapshotInitMode: LogicalSlotSnapshotInitMode.NoExport, cancellationToken: stop);
            changes = new ChangeLog(SourceOf(system), (ulong)slot.ConsistentPoint, _window, _windowBytes, _maxLag);
            started.SetResult(changes);
            _log.LogInformation("Change feed reading slot {Slot} from {Lsn}", slot.Name, slot.ConsistentPoint);

            using var idle = new PeriodicTimer(TimeSpan.FromSeconds(5));
            _ = StopWhenIdleAsync(connection, changes, idle, stopper);
            using var heartbeat = new PeriodicTimer(Heartbeat);
            _ = TickAsync(changes, heartbeat, stop);
            var decoder = new ChangeDecoder(changes, tables, _window, _windowBytes);
            var options = new PgOutputReplicationOptions(_publication, PgOutputProtocolVersion.V1, binary: true, messages: true);
            await foreach (var message in connection.StartReplication(slot, options, stop))
            {
                await decoder.DecodeAsync(message, stop);
                // The slot is temporary and never resumed from, so everything received can be released at once.
                connection.SetReplicationStatus(message.WalEnd);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            if (!started.TrySetException(e))
                _log.LogWarning(e, "Change feed reader stopped; subscribers will resume from a new slot (or get 409)");
        }
        finally
        {
            started.TrySetCanceled(stop);
            changes?.End();
        }
    }

    /// <summary>Wakes every subscriber each heartbeat interval; those that sent nothing since the last tick send a heartbeat.</summary>
    static async Task TickAsync(ChangeLog changes, PeriodicTimer timer, CancellationToken stop)
    {
        try
        {
            while (await timer.WaitForNextTickAsync(stop))
                changes.Wake();
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>
    /// Every few seconds: confirms the WAL the server has sent while nothing of a or b changed (else the slot would
    /// hold the WAL of every other write), and stops the reader once nobody has subscribed for <c>IdleSeconds</c>.
    /// </summary>
    async Task StopWhenIdleAsync(LogicalReplicationConnection connection, ChangeLog changes, PeriodicTimer timer, CancellationTokenSource stopper)
    {
        try
        {
            while (await timer.WaitForNextTickAsync(stopper.Token))
            {
                connection.SetReplicationStatus(connection.LastReceivedLsn);
                if (changes.Subscribers == 0 && Environment.TickCount64 - Interlocked.Read(ref _lastUse) > _idle.TotalMilliseconds)
                {
                    await stopper.CancelAsync();
                    return;
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    /// <summary>
    /// The connection string of the primary: replication connections take one host, and a formation's connection
    /// string names several. After a failover the next reader finds the new primary (and its ids a new source).
    /// </summary>
    async Task<string> PrimaryAsync(CancellationToken ct)
    {
        var settings = new NpgsqlConnectionStringBuilder(_connectionString);
        if (!Database.IsReplicated(settings))
            return _connectionString;
        settings.TargetSessionAttributes = "read-write";
        await using var hosts = NpgsqlDataSource.Create(settings);
        await using var primary = await hosts.OpenConnectionAsync(ct);
        settings.Host = primary.Host;
        settings.Port = primary.Port;
        settings.TargetSessionAttributes = null;
        return settings.ConnectionString;
    }

    /// <summary>
    /// Checks wal_level, creates the publication if it is missing (for the schema: a and b are dropped and created
    /// again by resets, and a publication FOR TABLE a, b would lose them) and reads the tables' current OIDs.
    /// </summary>
    async Task<Dictionary<string, uint>> PrepareAsync(CancellationToken ct)
    {
        await using var connection = new NpgsqlConnection(_primary);
        await connection.OpenAsync(ct);
        await using var command = connection.CreateCommand();
        command.CommandText = "SHOW wal_level";
        if (await command.ExecuteScalarAsync(ct) is not "logical")
            throw new ChangeFeedUnavailableException();
        command.CommandText = "SELECT count(*) FROM pg_publication WHERE pubname = @name";
        command.Parameters.AddWithValue("name", _publication);
        if ((long)(await command.ExecuteScalarAsync(ct))! == 0)
        {
            command.CommandText = $"CREATE PUBLICATION \"{_publication}\" FOR TABLES IN SCHEMA public";
            try { await command.ExecuteNonQueryAsync(ct); }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.DuplicateObject) { }
        }
        command.CommandText = "SELECT relname::text, oid::int8 FROM pg_class WHERE oid IN (to_regclass('public.a'), to_regclass('public.b'))";
        var tables = new Dictionary<string, uint>();
        await using var reader = await command.ExecuteReaderAsync(ct);
        while (await reader.ReadAsync(ct))
            tables[reader.GetString(0)] = (uint)reader.GetInt64(1);
        return tables;
    }

    /// <summary>Whether the server's WAL has reached <paramref name="id"/>: ids from beyond it are none of this database's.</summary>
    async Task<bool> IsPastAsync(ChangeId id, CancellationToken ct)
    {
        await using var connection = new NpgsqlConnection(_primary);
        await connection.OpenAsync(ct);
        await using var command = new NpgsqlCommand("SELECT pg_current_wal_lsn()::text", connection);
        var current = NpgsqlTypes.NpgsqlLogSequenceNumber.Parse((string)(await command.ExecuteScalarAsync(ct))!);
        return (ulong)current >= id.Lsn;
    }

    static uint SourceOf(ReplicationSystemIdentification system) => BinaryPrimitives.ReadUInt32BigEndian(
        SHA256.HashData(Encoding.UTF8.GetBytes($"{system.SystemId}/{system.Timeline}/{system.DbName}")));

    /// <summary>On shutdown: stops the reader and waits until its connection is closed, which drops the slot.</summary>
    public async ValueTask DisposeAsync()
    {
        Task reading;
        lock (_gate)
        {
            _stop?.Cancel();
            reading = _reading;
        }
        await reading;                                     // ReadAsync catches everything itself
    }
}

/// <summary>The database's wal_level is not logical: the feed cannot run, everything else can.</summary>
public sealed class ChangeFeedUnavailableException() : Exception(
    "The change feed needs PostgreSQL's wal_level=logical (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL).");

/// <summary>
/// Turns pgoutput's messages into events: a transaction's changes are gathered and appended at its commit, with ids
/// from its commit LSN. pgoutput recycles its message objects: everything is copied out before the next one.
/// </summary>
sealed class ChangeDecoder(ChangeLog changes, Dictionary<string, uint> tables, int window, long windowBytes)
{
    /// <summary>
    /// SSE needs no HTML-safe escaping: without it an event is about its row's UTF-8 size. With the default encoder a
    /// 1 MB PATCH of non-ASCII text became a 6 MB event (every character a \uXXXX; issue 16).
    /// </summary>
    static readonly JsonWriterOptions Json = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, SkipValidation = true };

    readonly List<Change> _pending = [];
    readonly ArrayBufferWriter<byte> _buffer = new(256);
    ulong _commitLsn;
    int _ordinal;
    long _pendingBytes;
    bool _tooLarge;

    public async ValueTask DecodeAsync(ReplicationMessage message, CancellationToken ct)
    {
        switch (message)
        {
            case BeginMessage begin:
                _commitLsn = (ulong)begin.TransactionFinalLsn;
                _ordinal = 0;
                _tooLarge = false;
                _pending.Clear();
                _pendingBytes = 0;
                break;
            case RelationMessage relation when Table(relation) is { } table:
                // A new OID for a or b: the table was dropped and created again (the seed program's drop_all/create_all).
                if (tables.TryGetValue(table, out var known) && known != relation.RelationId)
                    Reset("recreated");
                tables[table] = relation.RelationId;
                break;
            case InsertMessage insert when Table(insert.Relation) is { } table:
                await AddAsync(table + ".insert", insert.NewRow, ct);
                break;
            case UpdateMessage update when Table(update.Relation) is { } table:
                await AddAsync(table + ".update", update.NewRow, ct);
                break;
            case KeyDeleteMessage delete when Table(delete.Relation) is { } table:
                await AddAsync(table + ".delete", delete.Key, ct);
                break;
            case FullDeleteMessage delete when Table(delete.Relation) is { } table:
                await AddAsync(table + ".delete", delete.OldRow, ct);
                break;
            case TruncateMessage truncate when truncate.Relations.Any(r => Table(r) is not null):
                Reset("truncated");
                break;
            case LogicalDecodingMessage { Prefix: ChangeFeed.ResetMessage }:
                tables.Clear();                            // the next OIDs of a and b are the new tables', not a second reset
                Reset("reset");
                break;
            case CommitMessage:
                if (_tooLarge || _pendingBytes > windowBytes)
                {
                    _pending.Clear();
                    Reset("large-transaction");
                }
                changes.Append(_pending);
                _pending.Clear();
                _pendingBytes = 0;
                break;
        }
    }

    static string? Table(RelationMessage relation) =>
        relation is { Namespace: "public", RelationName: "a" or "b" } ? relation.RelationName : null;

    void Reset(string reason)
    {
        _buffer.ResetWrittenCount();
        using (var json = new Utf8JsonWriter(_buffer, Json))
        {
            json.WriteStartObject();
            json.WriteString("reason", reason);
            json.WriteEndObject();
        }
        Add("reset");
    }

    /// <summary>The row as the API shows it: <c>{"id","data"}</c> for A, <c>{"id","aId","data"}</c> for B.</summary>
    async ValueTask AddAsync(string type, ReplicationTuple row, CancellationToken ct)
    {
        if (_tooLarge || _pending.Count >= window || _pendingBytes > windowBytes)
        {
            // More changes than the window keeps, by count or by bytes: no subscriber could resume inside it, and
            // holding it would hold its size in memory. It goes out as one `reset`.
            _tooLarge = true;
            _ordinal++;
            return;
        }
        _buffer.ResetWrittenCount();
        using (var json = new Utf8JsonWriter(_buffer, Json))
        {
            json.WriteStartObject();
            await foreach (var value in row)
            {
                var name = value.GetFieldName();
                if (value.IsUnchangedToastedValue)
                    continue;                              // an update that left a large data value as it was
                var field = name switch { "id" => "id", "a_id" => "aId", "data" => "data", _ => null };
                if (field is null || value.IsDBNull && type.EndsWith(".delete"))
                    continue;                              // a delete's key carries only the id
                if (value.IsDBNull)
                    json.WriteNull(field);
                else if (field == "data")
                    json.WriteString(field, await value.Get<string>(ct));
                else
                    json.WriteNumber(field, await value.Get<int>(ct));
            }
            json.WriteEndObject();
        }
        Add(type);
    }

    void Add(string type)
    {
        var id = new ChangeId(changes.Source, _commitLsn, ++_ordinal);
        _pendingBytes += _buffer.WrittenCount;
        _pending.Add(new Change(id, new SseItem<byte[]>(_buffer.WrittenSpan.ToArray(), type) { EventId = id.ToString() }));
    }
}
