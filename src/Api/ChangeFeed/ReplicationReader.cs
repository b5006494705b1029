using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using AsyncOrmApi.Data;
using Npgsql;
using Npgsql.Replication;
using Npgsql.Replication.PgOutput;

namespace AsyncOrmApi.Changes;

// The feed's one replication reader: the slot, its timers, the primary it reads, the publication.
public sealed partial class ChangeFeed
{
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

            // Streamed only once someone subscribes: a read needs the slot (so that its position can be served), not its
            // changes, and a streaming walsender is a busy session of the database's. Until then the slot keeps the WAL
            // since its start, for at most IdleSeconds; a subscription then decodes it from there.
            var created = Environment.TickCount64;
            while (!changes.Wanted.IsCompleted)
            {
                if (Environment.TickCount64 - created > _idle.TotalMilliseconds)
                    return;
                await Task.WhenAny(changes.Wanted, Task.Delay(TimeSpan.FromSeconds(1), stop));
                stop.ThrowIfCancellationRequested();
            }

            using var idle = new PeriodicTimer(TimeSpan.FromSeconds(5));
            _ = StopWhenIdleAsync(connection, changes, idle, stopper);
            using var heartbeat = new PeriodicTimer(Heartbeat);
            _ = TickAsync(changes, heartbeat, stop);
            var decoder = new ChangeDecoder(changes, tables, _window, _windowBytes);
            var options = new PgOutputReplicationOptions(_publication, PgOutputProtocolVersion.V1, binary: true, messages: true);
            await foreach (var message in connection.StartReplication(slot, options, stop))
            {
                await decoder.DecodeAsync(message, stop);
                Known((ulong)message.WalEnd);
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
        await using var hosts = new NpgsqlDataSourceBuilder(settings.ConnectionString) { Name = "asyncormapi-changefeed-hosts" }.Build();
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
    Task<Dictionary<string, uint>> PrepareAsync(CancellationToken ct) => QueryAsync(async connection =>
    {
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
    }, ct);

    /// <summary>Whether the server's WAL has reached <paramref name="id"/>: ids from beyond it are none of this database's.</summary>
    async Task<bool> IsPastAsync(ulong lsn, CancellationToken ct)
    {
        if (lsn <= Interlocked.Read(ref _knownWal))
            return true;
        var current = await QueryAsync(async connection =>
        {
            await using var command = new NpgsqlCommand("SELECT pg_current_wal_insert_lsn()::text", connection);
            return (ulong)NpgsqlTypes.NpgsqlLogSequenceNumber.Parse((string)(await command.ExecuteScalarAsync(ct))!);
        }, ct);
        Known(current);
        return current >= lsn;
    }

    void Known(ulong wal)
    {
        for (var known = Interlocked.Read(ref _knownWal); wal > known; known = Interlocked.Read(ref _knownWal))
            if (Interlocked.CompareExchange(ref _knownWal, wal, known) == known)
                return;
    }

    /// <summary>The primary's snapshot now, as a read would record it.</summary>
    async Task<ReadSnapshot> SnapshotAsync(CancellationToken ct)
    {
        var snapshot = await QueryAsync(async connection =>
        {
            await using var command = new NpgsqlCommand($"SELECT {ReadSnapshot.Columns}", connection);
            await using var reader = await command.ExecuteReaderAsync(ct);
            await reader.ReadAsync(ct);
            return new ReadSnapshot(reader.GetString(0), reader.GetString(1));
        }, ct);
        Known((ulong)NpgsqlTypes.NpgsqlLogSequenceNumber.Parse(snapshot.Lsn));
        return snapshot;
    }

    static uint SourceOf(ReplicationSystemIdentification system) => BinaryPrimitives.ReadUInt32BigEndian(
        SHA256.HashData(Encoding.UTF8.GetBytes($"{system.SystemId}/{system.Timeline}/{system.DbName}")));
}
