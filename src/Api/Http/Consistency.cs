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

    /// <summary>The token a read sent, if any; false when it is not a WAL position.</summary>
    public static bool TryRead(string? text, out NpgsqlLogSequenceNumber? token)
    {
        token = null;
        if (string.IsNullOrEmpty(text))
            return true;
        if (!NpgsqlLogSequenceNumber.TryParse(text, out var lsn))
            return false;
        token = lsn;
        return true;
    }

    public static Microsoft.AspNetCore.Http.HttpResults.ValidationProblem Malformed(string text) =>
        Problems.Invalid(Header, $"{Token.Rule} It was '{text}'.");

    /// <summary>
    /// Answers a write with its token: the WAL position after its commit, read from the primary it ran on. One round trip
    /// of its own, after the commit: a position read inside the transaction would come before its commit record.
    /// </summary>
    public static async Task QueryAndSetAsync(AppDb db, HttpResponse response, CancellationToken ct) =>
        response.Headers[Header] = await db.Database
            .SqlQuery<string>($"SELECT pg_current_wal_insert_lsn()::text AS \"Value\"").SingleAsync(ct);
}
