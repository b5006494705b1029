using System.Threading.Channels;
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
        // The body is parsed while the previous batch is being copied: one batch waits, so memory stays at two
        // batches, and reading and COPY overlap instead of taking turns (script/bench).
        var batches = Channel.CreateBounded<List<NewA>>(new BoundedChannelOptions(1) { SingleReader = true, SingleWriter = true });
        var copying = CopyAllAsync((NpgsqlConnection)db.Database.GetDbConnection(), batches, ct);
        var reading = ReadAllAsync(lines, batches.Writer, ct);
        // A failed COPY surfaces before the reading it stopped; a bad line ends the reading and, through it, the COPY.
        await Task.WhenAll(copying, reading);
        await tx.CommitAsync(ct);
        return copying.Result;
    }

    static async Task ReadAllAsync(IAsyncEnumerable<NewA> lines, ChannelWriter<List<NewA>> batches, CancellationToken ct)
    {
        try
        {
            var batch = new List<NewA>(BatchRows);
            long chars = 0;
            await foreach (var line in lines)
            {
                batch.Add(line);
                chars += line.Data?.Length ?? 0;
                foreach (var newB in line.Bs ?? [])
                    chars += newB.Data?.Length ?? 0;
                if (batch.Count == BatchRows || chars >= BatchChars)
                {
                    await batches.WriteAsync(batch, ct);
                    batch = new List<NewA>(BatchRows);
                    chars = 0;
                }
            }
            if (batch.Count > 0)
                await batches.WriteAsync(batch, ct);
        }
        finally
        {
            batches.TryComplete();
        }
    }

    static async Task<(long A, long B)> CopyAllAsync(NpgsqlConnection connection, Channel<List<NewA>> batches, CancellationToken ct)
    {
        try
        {
            long a = 0, b = 0;
            await foreach (var batch in batches.Reader.ReadAllAsync(ct))
            {
                b += await CopyAsync(connection, batch, ct);
                a += batch.Count;
            }
            return (a, b);
        }
        catch (Exception e)
        {
            // Stops the reading, which may be waiting to hand over its next batch.
            batches.Writer.TryComplete(e);
            throw;
        }
    }

    /// <summary>
    /// Three round trips a batch: the A ids (taken from a_id_seq in line order, because each B must name its A),
    /// then COPY a, then COPY b (whose ids the column default takes from b_id_seq).
    /// </summary>
    static async Task<long> CopyAsync(NpgsqlConnection connection, List<NewA> batch, CancellationToken ct)
    {
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
                copy.StartRow();
                copy.Write(ids[i], NpgsqlDbType.Integer);
                WriteText(copy, batch[i].Data);
            }
            await copy.CompleteAsync(ct);
        }

        ulong bs;
        await using (var copy = await connection.BeginBinaryImportAsync("COPY b (a_id, data) FROM STDIN (FORMAT BINARY)", ct))
        {
            for (var i = 0; i < batch.Count; i++)
                foreach (var newB in batch[i].Bs ?? [])
                {
                    copy.StartRow();
                    copy.Write(ids[i], NpgsqlDbType.Integer);
                    WriteText(copy, newB.Data);
                }
            bs = await copy.CompleteAsync(ct);
        }
        return (long)bs;
    }

    static void WriteText(NpgsqlBinaryImporter copy, string? text)
    {
        if (text is null)
            copy.WriteNull();
        else
            copy.Write(text, NpgsqlDbType.Varchar);
    }
}
