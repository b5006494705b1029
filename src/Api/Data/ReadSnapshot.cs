namespace AsyncOrmApi.Data;

/// <summary>
/// The snapshot a read saw (<c>pg_current_snapshot()</c>) and the WAL position with it, read in the same snapshot as the
/// rows: what the change feed needs to tell which changes the read did not see. Kept on the request (a feature of its
/// HttpContext) for whoever answers with it.
/// </summary>
public sealed record ReadSnapshot(string Snapshot, string Lsn)
{
    /// <summary>
    /// The two columns, as SQL. On a standby the position is the replay's: there, visibility follows replay order.
    /// </summary>
    public const string Columns = "pg_current_snapshot()::text AS snapshot, "
        + "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text AS lsn";

    /// <summary>Marks the reads that record their snapshot on the request.</summary>
    public sealed class Metadata;

    /// <summary>Records the read's snapshot on the request.</summary>
    public static Action<ReadSnapshot> On(HttpContext http) => snapshot => http.Features.Set(snapshot);
}
