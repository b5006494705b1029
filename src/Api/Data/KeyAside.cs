using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace AsyncOrmApi.Data;

/// <summary>
/// b's foreign key, set aside for a bulk load into empty tables (a big seed, an ingest) and added back, checked once, in the
/// same transaction: PostgreSQL's own advice for bulk loads ("Remove Foreign Key Constraints", Populating a Database).
/// </summary>
/// <remarks>
/// With the key in place, each b row's check is a query of its own (executor start, index scan, <c>FOR KEY SHARE</c>):
/// 60% of the backend's time in a seed (perf), and a same-shaped <c>COPY FROM</c> pays it alike, so a load could only
/// ever tie it (the seed: 0.75-1.08 in script/bench). Added back, the key is checked by one anti-join over all of b (the
/// seed: 1.38-1.76 of COPY FROM, three runs; issue 20). The price is that dropping the key locks a and b (ACCESS EXCLUSIVE)
/// until the load commits: reads wait for it, whose rows they could not see before its commit anyway (100,000 copies: a
/// GET /a waited 5.4 s for a 5.6 s seed; with the key in place the seed took 11.3 s and 216 reads took 63 ms at most). So
/// the callers bound it (Seed:MaxCopiesWithKeyAside, Ingest:MaxRowsWithKeyAside), it is set aside only when both tables
/// are empty, and only if the locks come within 20 ms: a load never waits for them with reads queued behind it, as a reset
/// does not (a stream or an ingest holding the tables: the load checks row by row instead).
/// The key's name and definition are read from the catalog, so the seed program's own tables keep theirs.
/// </remarks>
sealed record KeyAside(string Drop, string Restore)
{
    const string Savepoint = "bulk_load";
    const string Lock =
        "SELECT set_config('lock_timeout', '20ms', true); LOCK TABLE a, b IN ACCESS EXCLUSIVE MODE; SET LOCAL lock_timeout TO DEFAULT";

    /// <summary>Whether the key could be set aside now (both tables empty), without taking any lock.</summary>
    public static async Task<bool> PossibleAsync(AppDb db, CancellationToken ct) => await FindAsync(db, ct) is not null;

    /// <summary>Drops b's foreign key and returns it; null (nothing changed) when the tables are busy or not empty.</summary>
    public static async Task<KeyAside?> SetAsideAsync(AppDb db, CancellationToken ct)
    {
        if (await FindAsync(db, ct) is null)
            return null;                               // rows to keep reading: no lock at all
        var tx = db.Database.CurrentTransaction!;
        await tx.CreateSavepointAsync(Savepoint, ct);
        KeyAside? key;
        try
        {
            await db.Database.ExecuteSqlRawAsync(Lock, ct);
            // Again under the locks: a writer may have come first.
            key = await FindAsync(db, ct);
            if (key is not null)
                await db.Database.ExecuteSqlRawAsync(key.Drop, ct);
        }
        catch (PostgresException e) when (e.SqlState is PostgresErrorCodes.LockNotAvailable or PostgresErrorCodes.InsufficientPrivilege)
        {
            key = null;                                // busy tables, or a role that may insert but not alter
        }
        if (key is null)
            await tx.RollbackToSavepointAsync(Savepoint, ct);   // the locks go; the load checks row by row
        await tx.ReleaseSavepointAsync(Savepoint, ct);
        return key;
    }

    /// <summary>b's one foreign key to a, as the statements that drop and add it, when both tables are empty.</summary>
    /// <remarks>The statements are made from the catalog (format's %I quotes the name), not from anything a client sent.</remarks>
    static Task<KeyAside?> FindAsync(AppDb db, CancellationToken ct) => db.Database.SqlQueryRaw<KeyAside>("""
        SELECT format('ALTER TABLE b DROP CONSTRAINT %I', conname) AS "Drop",
               format('ALTER TABLE b ADD CONSTRAINT %I %s', conname, pg_get_constraintdef(oid)) AS "Restore"
        FROM pg_constraint
        WHERE conrelid = 'b'::regclass AND confrelid = 'a'::regclass AND contype = 'f'
          AND NOT EXISTS (SELECT FROM a) AND NOT EXISTS (SELECT FROM b)
        """).SingleOrDefaultAsync(ct);

    /// <summary>Adds the key back as it was: PostgreSQL checks every row of b against a in one pass.</summary>
    public Task RestoreAsync(AppDb db, CancellationToken ct) => db.Database.ExecuteSqlRawAsync(Restore, ct);
}
