using Microsoft.EntityFrameworkCore;
using Npgsql;
using NpgsqlTypes;

namespace AsyncOrmApi.Data;

/// <summary>
/// Bulk ingest: new A and their Bs, streamed into PostgreSQL with binary COPY in one transaction, all or nothing.
/// </summary>
public static class Ingest
{
    // A batch is what sits in memory between the request body and COPY: a few MB at most, whatever the body's size.
    const int BatchRows = 10_000;
    const long BatchChars = 2 * 1024 * 1024;

    /// <summary>
    /// Adds every A of <paramref name="lines"/> with its Bs and counts them; nothing is added if the lines end in an
    /// exception (a bad line, a client that hung up). A ids follow line order; all ids come from the tables' own
    /// sequences, so a later seed or SQLAlchemy insert carries on after them.
    /// </summary>
    public static async Task<(long A, long B)> AddAllAsync(this AppDb db, IAsyncEnumerable<NewA> lines, CancellationToken ct)
    {
        // A gigabyte body takes minutes, and its statements run while the body is still arriving.
        db.Database.SetCommandTimeout(TimeSpan.FromMinutes(10));
        await using var tx = await db.Database.BeginTransactionAsync(ct);
        var connection = (NpgsqlConnection)db.Database.GetDbConnection();
        var batch = new List<NewA>(BatchRows);
        long chars = 0, a = 0, b = 0;
        await foreach (var line in lines)
        {
            batch.Add(line);
            chars += line.Data?.Length ?? 0;
            foreach (var newB in line.Bs ?? [])
                chars += newB.Data?.Length ?? 0;
            if (batch.Count == BatchRows || chars >= BatchChars)
            {
                b += await CopyAsync(connection, batch, ct);
                a += batch.Count;
                batch.Clear();
                chars = 0;
            }
        }
        b += await CopyAsync(connection, batch, ct);
        a += batch.Count;
        await tx.CommitAsync(ct);
        return (a, b);
    }

    /// <summary>
    /// Three round trips a batch: the A ids (taken from a_id_seq in line order, because each B must name its A),
    /// then COPY a, then COPY b (whose ids the column default takes from b_id_seq).
    /// </summary>
    static async Task<long> CopyAsync(NpgsqlConnection connection, List<NewA> batch, CancellationToken ct)
    {
        if (batch.Count == 0)
            return 0;
        var ids = new int[batch.Count];
        await using (var next = new NpgsqlCommand(
            "SELECT nextval(pg_get_serial_sequence('a', 'id'))::int FROM generate_series(1, $1)", connection))
        {
            next.Parameters.Add(new() { Value = batch.Count });
            await using var reader = await next.ExecuteReaderAsync(ct);
            for (var i = 0; await reader.ReadAsync(ct); i++)
                ids[i] = reader.GetInt32(0);
        }

        await using (var copy = await connection.BeginBinaryImportAsync("COPY a (id, data) FROM STDIN (FORMAT BINARY)", ct))
        {
            for (var i = 0; i < batch.Count; i++)
            {
                await copy.StartRowAsync(ct);
                await copy.WriteAsync(ids[i], NpgsqlDbType.Integer, ct);
                await WriteTextAsync(copy, batch[i].Data, ct);
            }
            await copy.CompleteAsync(ct);
        }

        ulong bs;
        await using (var copy = await connection.BeginBinaryImportAsync("COPY b (a_id, data) FROM STDIN (FORMAT BINARY)", ct))
        {
            for (var i = 0; i < batch.Count; i++)
                foreach (var newB in batch[i].Bs ?? [])
                {
                    await copy.StartRowAsync(ct);
                    await copy.WriteAsync(ids[i], NpgsqlDbType.Integer, ct);
                    await WriteTextAsync(copy, newB.Data, ct);
                }
            bs = await copy.CompleteAsync(ct);
        }
        return (long)bs;
    }

    static Task WriteTextAsync(NpgsqlBinaryImporter copy, string? text, CancellationToken ct) =>
        text is null ? copy.WriteNullAsync(ct) : copy.WriteAsync(text, NpgsqlDbType.Varchar, ct);
}
