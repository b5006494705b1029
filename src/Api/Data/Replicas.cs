using Microsoft.EntityFrameworkCore;
using Npgsql;
using NpgsqlTypes;

namespace AsyncOrmApi.Data;

/// <summary>
/// Reads on a standby when the connection string names several hosts (a pg_auto_failover formation, say): a second
/// data source on the same hosts that connects to standbys only, lent to a request's <see cref="AppDb"/> for its reads. A read
/// that carries a consistency token (a write's WAL position) is answered by the standby only once it has replayed that
/// far, within <see cref="CatchUpWait"/>; else by the primary. With one host there is nothing to choose.
/// </summary>
/// <remarks>
/// Not one NpgsqlMultiHostDataSource for EF Core and these reads (<c>WithTargetSession(ReadWrite)</c> and
/// <c>WithTargetSession(Standby)</c>), though it works: built and run through the whole suite on a formation, every test
/// passed but the one on /metrics' pool names, and EF Core (efcore.pg 10) built no service provider per instance (the
/// ManyServiceProvidersCreatedWarning of npgsql/efcore.pg#2720 and #3498, fixed in 9.0.5). But its hosts' pools report
/// under one name, and /metrics then showed one of them: 18 idle connections, the standby's, while the primary's went
/// uncounted (pg_stat_activity showed both). Two data sources keep each pool in sight (asyncormapi, asyncormapi-reads),
/// and let the standby's connections alone carry the keepalive below.
/// </remarks>
public sealed class Replicas : IAsyncDisposable
{
    /// <summary>How long a read with a token waits for the standby to catch up before it goes to the primary.</summary>
    public static readonly TimeSpan CatchUpWait = TimeSpan.FromMilliseconds(200);

    readonly NpgsqlDataSource? _reads;

    public Replicas(IConfiguration config)
    {
        var settings = new NpgsqlConnectionStringBuilder(Database.ConnectionString(config));
        if (!Database.IsReplicated(settings))
            return;
        // Standbys only: prefer-standby kept handing out pooled connections to the primary (9 of 60 reads on the
        // standby right after start). With no standby up, opening fails fast and the read goes to the primary.
        settings.TargetSessionAttributes = "standby";
        // A pooled connection to a standby that died (or was promoted) is found out within a second by a keepalive, not
        // by the next read; and the standby's own statistics of these reads are published then (PostgreSQL 15 flushes
        // a busy backend's counters only once it goes idle for a moment).
        if (settings.KeepAlive == 0)
            settings.KeepAlive = 1;
        var builder = new NpgsqlDataSourceBuilder(settings.ConnectionString);
        Database.Tune(builder, "asyncormapi-reads");
        _reads = builder.Build();
    }

    /// <summary>
    /// Points <paramref name="db"/> at a standby for this request's reads when one is healthy and, given a token, has
    /// replayed it; disposing the result points it back at the primary. Without a standby it changes nothing.
    /// </summary>
    public async Task<IAsyncDisposable> ReadFromStandbyAsync(AppDb db, NpgsqlLogSequenceNumber? token, CancellationToken ct)
    {
        if (_reads is null)
            return NoStandby;
        NpgsqlConnection? connection = null;
        try
        {
            connection = await _reads.OpenConnectionAsync(ct);
            if (token is { } wanted && !await HasReplayedAsync(db, connection, wanted, ct))
            {
                await connection.DisposeAsync();
                return NoStandby;
            }
            db.Database.SetDbConnection(connection, contextOwnsConnection: true);
            return new Lent(db);
        }
        catch (ConsistencyTokenAheadException)
        {
            await connection!.DisposeAsync();
            throw;
        }
        catch (NpgsqlException) when (!ct.IsCancellationRequested)
        {
            // No host answers as a reader: the primary's own path will answer, or say 503.
            if (connection is not null)
                await connection.DisposeAsync();
            return NoStandby;
        }
    }

    /// <summary>
    /// Whether this server shows the write at <paramref name="token"/>: a primary always does (it has every write,
    /// and a token from before a failover is behind the new primary's WAL too); a standby once it has replayed that
    /// far. Bounded: the token never makes a read wait longer than <see cref="CatchUpWait"/>.
    /// </summary>
    /// <exception cref="ConsistencyTokenAheadException">The token is ahead of the primary's WAL: no write answered it.</exception>
    static async Task<bool> HasReplayedAsync(AppDb primary, NpgsqlConnection connection, NpgsqlLogSequenceNumber token, CancellationToken ct)
    {
        await using var check = new NpgsqlCommand(
            "SELECT NOT pg_is_in_recovery() OR coalesce(pg_last_wal_replay_lsn() >= $1, false)", connection)
        {
            Parameters = { new() { Value = token, NpgsqlDbType = NpgsqlDbType.PgLsn } },
        };
        if ((bool)(await check.ExecuteScalarAsync(ct))!)
            return true;
        // Not replayed yet: a token no write can have answered (FFFFFFFF/FFFFFFFF) would make every read wait the whole
        // CatchUpWait for nothing (issue 16). One query on the primary tells, and only on this path.
        if (await primary.Database.SqlQuery<bool>($"SELECT pg_current_wal_insert_lsn() < {token} AS \"Value\"").SingleAsync(ct))
            throw new ConsistencyTokenAheadException(token);
        var deadline = DateTime.UtcNow + CatchUpWait;
        while (true)
        {
            if ((bool)(await check.ExecuteScalarAsync(ct))!)
                return true;
            if (DateTime.UtcNow >= deadline)
                return false;
            await Task.Delay(20, ct);
        }
    }

    /// <summary>
    /// Runs a buffered read on a standby, and once more on the primary if replay cancelled it there ("conflict with
    /// recovery": the standby removed rows the query still needed).
    /// </summary>
    public async Task<T> ReadAsync<T>(AppDb db, NpgsqlLogSequenceNumber? token, Func<AppDb, Task<T>> read, CancellationToken ct)
    {
        await using (var lent = await ReadFromStandbyAsync(db, token, ct))
        {
            try
            {
                return await read(db);
            }
            catch (PostgresException e) when (lent != NoStandby && IsRecoveryConflict(e))
            {
            }
        }
        return await read(db);
    }

    /// <summary>
    /// By its SQLSTATE alone: a standby cancels a read that conflicts with replay with 40001 (or 40P01 for a buffer pin
    /// deadlock), and a read-only query in READ COMMITTED, as the API's are, meets neither for any other reason.
    /// </summary>
    static bool IsRecoveryConflict(PostgresException e) =>
        e.SqlState is PostgresErrorCodes.SerializationFailure or PostgresErrorCodes.DeadlockDetected;

    static readonly IAsyncDisposable NoStandby = new Lent(null);

    sealed class Lent(AppDb? db) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            // Back to the data source of the pool (the primary); the standby connection is closed with it.
            db?.Database.SetDbConnection(null);
            return ValueTask.CompletedTask;
        }
    }

    public ValueTask DisposeAsync() => _reads?.DisposeAsync() ?? ValueTask.CompletedTask;
}

/// <summary>A <c>Consistency-Token</c> beyond the primary's WAL: not a position any write of this database answered.</summary>
public sealed class ConsistencyTokenAheadException(NpgsqlLogSequenceNumber token) : Exception(
    $"{Http.Consistency.Header} {token} is ahead of the primary's WAL: no write of this database answered it. Send the "
    + $"{Http.Consistency.Header} of a write's answer, or none.");
