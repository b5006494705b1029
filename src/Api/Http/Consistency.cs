using AsyncOrmApi.Data;
using Microsoft.EntityFrameworkCore;
using NpgsqlTypes;

namespace AsyncOrmApi.Http;

/// <summary>
/// Read-your-writes across a primary and its standbys: every write answers with the WAL position of its commit in
/// <c>Consistency-Token</c>; a read that sends it back is answered only by a server that has replayed that far
/// (<see cref="Replicas"/>). GitLab's LSN load balancing, carried in HTTP like Cosmos DB's session tokens.
/// </summary>
public static class Consistency
{
    public const string Header = "Consistency-Token";

    public static readonly ParameterRule Token = new(Header,
        $"{Header} must be a WAL position such as 0/16B3748, as a write's {Header} answer holds it: the read then sees that "
        + "write (a standby answers only once it has replayed it, else the primary does). Without it a read may lag "
        + "the last writes by the replication delay.");

    /// <summary>
    /// The WAL position now. Read after a commit, on the primary it ran on, it is at or past that commit's record; read
    /// inside the transaction it would come before it.
    /// </summary>
    public const string PositionSql = "SELECT pg_current_wal_insert_lsn()::text AS \"Value\"";

    /// <summary>Answers a committed write with its token: one round trip of its own, after the commit.</summary>
    public static async Task QueryAndSetAsync(AppDb db, HttpResponse response, CancellationToken ct) =>
        response.Headers[Header] = await db.Database.SqlQueryRaw<string>(PositionSql).SingleAsync(ct);
}

/// <summary>
/// The request header <c>Consistency-Token</c>: a WAL position such as <c>0/16B3748</c>. Minimal APIs bind it by its
/// TryParse; a value that is none answers the parameter's 400 (<see cref="Consistency.Token"/>).
/// </summary>
public readonly record struct ConsistencyToken(NpgsqlLogSequenceNumber Lsn)
{
    public static bool TryParse(string? text, out ConsistencyToken token)
    {
        NpgsqlLogSequenceNumber lsn = default;
        var parsed = text is not null && NpgsqlLogSequenceNumber.TryParse(text, out lsn);
        token = new ConsistencyToken(lsn);
        return parsed;
    }
}
