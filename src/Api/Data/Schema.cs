using System.Diagnostics;
using AsyncOrmApi.Changes;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace AsyncOrmApi.Data;

/// <summary>The seed's drop_all/create_all, derived from the EF Core model so there is one definition of the tables.</summary>
public static class Schema
{
    // Serialises concurrent schema changes (two instances starting, a reset racing a start-up).
    const long LockKey = 0x_A5_0B_5EED;

    /// <summary>Creates the tables that are missing; never drops or alters anything.</summary>
    public static async Task CreateMissingTablesAsync(this AppDb db, CancellationToken ct = default)
    {
        // EF Core's create script has no IF NOT EXISTS form (EnsureCreated does nothing once any table
        // exists), so the plain script is made idempotent statement by statement.
        var script = db.Database.GenerateCreateScript()
            .Replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ")
            .Replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ");
        // What the API keeps for itself (the answers of idempotent writes) is in a schema of its own, never in public.
        await RunLockedAsync(db, script + "\n" + Idempotency.IdempotencyStore.CreateSql, ct);
    }

    /// <summary>Drops the model's two tables (only those, dependent first) and creates them again, in one transaction.</summary>
    /// <remarks>
    /// The logical message tells the change feed at this commit (not at the next insert) that its subscribers must refetch.
    /// </remarks>
    /// <param name="lockWait">How long to try for the tables' locks; null: as long as it takes.</param>
    /// <exception cref="PostgresException">55P03 (lock_not_available): the tables stayed busy for <paramref name="lockWait"/>.</exception>
    public static async Task ResetTablesAsync(this AppDb db, TimeSpan? lockWait = null, CancellationToken ct = default)
    {
        var sql = "DROP TABLE IF EXISTS b;\nDROP TABLE IF EXISTS a;\n" + db.Database.GenerateCreateScript()
            + $"\nSELECT pg_logical_emit_message(true, '{ChangeFeed.ResetMessage}', '');";
        var start = Stopwatch.GetTimestamp();
        while (true)
        {
            try
            {
                // A DROP waits for every open transaction on the tables (a trickling ingest, a long read), and every read
                // of a queues behind the waiting DROP: with a plain wait, anonymous GET /a/first answered 504 after 30 s
                // behind a stalled admin ingest (issue 16). So each attempt waits for its locks a moment only and gives
                // up, letting the reads through, and tries again until lockWait has passed.
                await RunLockedAsync(db, sql, ct, lockTimeout: lockWait is null ? null : AttemptLockTimeout);
                return;
            }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.LockNotAvailable
                && Stopwatch.GetElapsedTime(start) + RetryDelay < lockWait)
            {
                await Task.Delay(RetryDelay, ct);
            }
        }
    }

    /// <summary>How long one attempt of a reset waits for its locks: as long as a read may queue behind it.</summary>
    const string AttemptLockTimeout = "20ms";
    static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(100);

    static async Task RunLockedAsync(AppDb db, string sql, CancellationToken ct, string? lockTimeout = null)
    {
        await using var tx = await db.BeginWriteAsync(ct);
        // Joined (a reset sent with an Idempotency-Key): an attempt that fails must not abort the transaction its key is
        // stored in, so it is rolled back to a savepoint; and its short lock_timeout ends with it.
        var outer = tx.Joined ? db.Database.CurrentTransaction : null;
        if (outer is not null)
        {
            await outer.CreateSavepointAsync(Attempt, ct);
            if (lockTimeout is not null)
                sql += "\nSET LOCAL lock_timeout TO DEFAULT;";
        }
        try
        {
            if (lockTimeout is not null)
                await db.Database.ExecuteSqlAsync($"SELECT set_config('lock_timeout', {lockTimeout}, true)", ct);
            await db.Database.ExecuteSqlAsync($"SELECT pg_advisory_xact_lock({LockKey})", ct);
            await db.Database.ExecuteSqlRawAsync(sql, ct);
        }
        catch (PostgresException) when (outer is not null)
        {
            await outer.RollbackToSavepointAsync(Attempt, ct);
            throw;
        }
        await tx.CommitAsync(ct);
    }

    const string Attempt = "reset_attempt";
}
