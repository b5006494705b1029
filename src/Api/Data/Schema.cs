using Microsoft.EntityFrameworkCore;

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
        await RunLockedAsync(db, script, ct);
    }

    /// <summary>Drops the model's two tables (only those, dependent first) and creates them again, in one transaction.</summary>
    /// <remarks>
    /// The logical message tells the change feed at this commit (not at the next insert) that its subscribers must refetch.
    /// </remarks>
    public static Task ResetTablesAsync(this AppDb db, CancellationToken ct = default) =>
        RunLockedAsync(db, "DROP TABLE IF EXISTS b;\nDROP TABLE IF EXISTS a;\n" + db.Database.GenerateCreateScript()
            + $"\nSELECT pg_logical_emit_message(true, '{ChangeFeed.ResetMessage}', '');", ct);

    static async Task RunLockedAsync(AppDb db, string sql, CancellationToken ct)
    {
        await using var tx = await db.Database.BeginTransactionAsync(ct);
        await db.Database.ExecuteSqlAsync($"SELECT pg_advisory_xact_lock({LockKey})", ct);
        await db.Database.ExecuteSqlRawAsync(sql, ct);
        await tx.CommitAsync(ct);
    }
}
