using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace AsyncOrmApi.Data;

/// <summary>PostgreSQL away, as opposed to a bug: what the API answers with 503 and recovers from by itself.</summary>
public static class Outage
{
    /// <summary>
    /// Npgsql could not reach the server or lost it (transient), the server is shutting down or starting up, or a write
    /// met a server that is read-only for now (a formation between primaries).
    /// </summary>
    public static bool Is(Exception exception)
    {
        for (var e = exception; e is not null; e = e.InnerException)
            if (e is PostgresException
                {
                    SqlState: PostgresErrorCodes.AdminShutdown or PostgresErrorCodes.CrashShutdown or PostgresErrorCodes.CannotConnectNow
                        or PostgresErrorCodes.ReadOnlySqlTransaction,
                } or NpgsqlException { IsTransient: true } || IsNoSuitableHost(e))
                return true;
        return false;
    }

    /// <summary>
    /// With several hosts in the connection string, none answered as the one wanted: no primary while a standby is
    /// being promoted, say. Npgsql has no SQLSTATE or type for it, only this message (NpgsqlMultiHostDataSource).
    /// </summary>
    static bool IsNoSuitableHost(Exception e) =>
        e is NpgsqlException and not PostgresException && e.Message.StartsWith("No suitable host", StringComparison.Ordinal);

    /// <summary>
    /// The idle pooled connections died with the server too; Npgsql does not notice until each is used again, so they
    /// are dropped at the first outage rather than failing one request per connection after recovery.
    /// </summary>
    public static void DropIdleConnections(AppDb? db)
    {
        if (db?.Database.GetDbConnection() is NpgsqlConnection connection)
            NpgsqlConnection.ClearPool(connection);
    }
}
