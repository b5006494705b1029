using System.Buffers;
using System.Threading.Channels;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using NpgsqlTypes;

namespace AsyncOrmApi.Data;

/// <summary>What an ingest does with a row whose id exists already (RFC 7240 <c>Prefer: resolution=…</c>, PostgREST's names).</summary>
public enum Resolution
{
    /// <summary>No preference: an existing id is a conflict (409), and nothing is added.</summary>
    None,
    /// <summary><c>merge-duplicates</c>: the row is updated where it differs; rows the body does not name are left alone.</summary>
    MergeDuplicates,
    /// <summary><c>ignore-duplicates</c>: the existing row is kept as it is.</summary>
    IgnoreDuplicates,
}

/// <summary>What an ingest did to one table's rows.</summary>
public record struct RowChanges(long Inserted, long Updated, long Unchanged);

/// <summary>An id of the body that exists already, with no resolution preference: nothing was added.</summary>
public sealed class IdExistsException(string table, int id, int line)
    : Exception($"Line {line} of the NDJSON body names {table.ToUpperInvariant()} id {id}, which exists already: nothing was added. "
        + "Send Prefer: resolution=merge-duplicates to update existing rows, or resolution=ignore-duplicates to keep them.");

/// <summary>
/// Bulk ingest: A and their Bs, streamed into PostgreSQL with binary COPY in one transaction, all or nothing. Without ids
/// they take theirs from the sequences; with ids (a copy of another deployment's stream, say) they keep them, and an id
/// that exists is a conflict, updated (merge) or kept (ignore).
/// </summary>
public static class Ingest
{
    /// <summary>
    /// Adds (or merges) every A of <paramref name="batches"/> with its Bs and counts what happened; nothing changes if the
    /// batches end in an exception (a bad line, a client that hung up, <see cref="IdExistsException"/>). Without ids, A ids
    /// follow line order from the tables' own sequences; with ids, the sequences are moved past the largest, so a later
    /// seed or SQLAlchemy insert carries on after them.
    /// </summary>
    /// <param name="keyAside">
    /// The most rows (A and B) a body into empty tables may hold to be read whole first and then copied with b's foreign key
    /// set aside (<see cref="KeyAside"/>, <see cref="Spool"/>); 0: never, every body is copied as it arrives.
    /// </param>
    public static async Task<(RowChanges A, RowChanges B)> AddAllAsync(this AppDb db, IAsyncEnumerable<NewRows> batches,
        Resolution resolution, CancellationToken ct, long keyAside = 0)
    {
        // A gigabyte body takes minutes, and its statements run while the body is still arriving.
        db.Database.SetCommandTimeout(TimeSpan.FromMinutes(10));
        // Into empty tables, the per-row checks of b's key are most of the work: 70% of \copy's time for script/bench's
        // 1,000,000 lines (24-27 s with the key, 6.6-8.5 s without it and its check after). The body is read whole first,
        // with no lock and no transaction of its own, so that the tables are held only while PostgreSQL copies.
        await using var spool = keyAside > 0 && await KeyAside.PossibleAsync(db, ct) ? await Spool.FillAsync(batches, keyAside, ct) : null;
        await using var tx = await db.BeginWriteAsync(ct);
        var key = spool is { Whole: true } ? await KeyAside.SetAsideAsync(db, ct) : null;
        // The body is parsed while the previous batch is being copied: reading and COPY overlap instead of taking
        // turns (script/bench: 0.74-0.79 x psql's \copy before, 0.90 x with this and NewRows), and memory stays at
        // three batches at most: one being copied, one waiting, one being filled.
        var ready = Channel.CreateBounded<NewRows>(new BoundedChannelOptions(1) { SingleReader = true, SingleWriter = true });
        var copying = CopyAllAsync((NpgsqlConnection)db.Database.GetDbConnection(), ready, resolution, ct);
        var reading = ReadAllAsync(spool?.Batches(ct) ?? batches, ready.Writer, ct);
        // A failed COPY surfaces before the reading it stopped; a bad line ends the reading and, through it, the COPY.
        await Task.WhenAll(copying, reading);
        if (key is not null)
            await key.RestoreAsync(db, ct);
        await tx.CommitAsync(ct);
        return copying.Result;
    }

    static async Task ReadAllAsync(IAsyncEnumerable<NewRows> batches, ChannelWriter<NewRows> ready, CancellationToken ct)
    {
        try
        {
            await foreach (var batch in batches)
                await ready.WriteAsync(batch, ct);
        }
        finally
        {
            ready.TryComplete();
        }
    }

    static async Task<(RowChanges A, RowChanges B)> CopyAllAsync(NpgsqlConnection connection, Channel<NewRows> ready,
        Resolution resolution, CancellationToken ct)
    {
        try
        {
            Named? named = null;
            RowChanges a = default, b = default;
            await foreach (var batch in ready.Reader.ReadAllAsync(ct))
                using (batch)
                {
                    if (batch.Heads().First().Id == 0)
                    {
                        await CopyAsync(connection, batch, ct);
                        a.Inserted += batch.A;
                        b.Inserted += batch.B;
                        continue;
                    }
                    named ??= await Named.StartAsync(connection, ct);
                    var (inA, inB) = await named.CopyAsync(connection, batch, resolution, ct);
                    (a, b) = (Add(a, inA), Add(b, inB));
                }
            if (named is not null)
                await named.AdvanceSequencesAsync(connection, ct);
            return (a, b);
        }
        catch (Exception e)
        {
            // Stops the reading, which may be waiting to hand over its next batch.
            ready.Writer.TryComplete(e);
            throw;
        }
    }

    static RowChanges Add(RowChanges x, RowChanges y) => new(x.Inserted + y.Inserted, x.Updated + y.Updated, x.Unchanged + y.Unchanged);

    /// <summary>
    /// Three round trips a batch: the A ids (taken from a_id_seq in line order, because each B must name its A),
    /// then COPY a, then COPY b (whose ids the column default takes from b_id_seq).
    /// </summary>
    /// <remarks>
    /// The sequence is looked up once per batch (OFFSET 0 keeps the subquery from being folded into the select list):
    /// with <c>nextval(pg_get_serial_sequence('a', 'id'))</c>, PostgreSQL looked it up for every row, 15% of the
    /// backend's time in an ingest (perf), 2.2 s against 0.27 s for 300,000 ids (issue 20).
    /// </remarks>
    static async Task CopyAsync(NpgsqlConnection connection, NewRows batch, CancellationToken ct)
    {
        var ids = ArrayPool<int>.Shared.Rent(batch.A);
        await using (var next = new NpgsqlCommand("""
            SELECT nextval(a_id.seq)::int
            FROM (SELECT pg_get_serial_sequence('a', 'id')::regclass AS seq OFFSET 0) AS a_id, generate_series(1, $1)
            """, connection))
        {
            next.Parameters.Add(new() { Value = batch.A });
            await using var reader = await next.ExecuteReaderAsync(ct);
            for (var i = 0; await reader.ReadAsync(ct); i++)
                ids[i] = reader.GetInt32(0);
        }

        await using (var copy = await connection.BeginBinaryImportAsync("COPY a (id, data) FROM STDIN (FORMAT BINARY)", ct))
        {
            var i = 0;
            foreach (var (_, _, data, _) in batch.As())
            {
                copy.StartRow();
                copy.Write(ids[i++], NpgsqlDbType.Integer);
                WriteText(copy, data);
            }
            await copy.CompleteAsync(ct);
        }

        await using (var copy = await connection.BeginBinaryImportAsync("COPY b (a_id, data) FROM STDIN (FORMAT BINARY)", ct))
        {
            using var bs = batch.Bs().GetEnumerator();
            var i = 0;
            foreach (var (_, _, count) in batch.Heads())
            {
                for (var k = 0; k < count && bs.MoveNext(); k++)
                {
                    copy.StartRow();
                    copy.Write(ids[i], NpgsqlDbType.Integer);
                    WriteText(copy, bs.Current.Data);
                }
                i++;
            }
            await copy.CompleteAsync(ct);
        }
        ArrayPool<int>.Shared.Return(ids);
    }

    /// <summary>
    /// Rows that name their ids. Ids above each table's largest id when the ingest began cannot exist: they are copied
    /// straight in, as rows without ids are (a copy into empty tables takes only this path: 0.87-1.01x the plain ingest). The others are copied into
    /// temporary tables and go in with one <c>INSERT … SELECT … ON CONFLICT</c> per table and batch, which first leaves
    /// out the rows equal to the stored ones: <c>ON CONFLICT DO UPDATE … WHERE</c> alone locks every conflicting row
    /// before it tests the WHERE, which writes WAL for each (51 MB for a no-op re-merge of 200,000 lines, against 0.1 MB
    /// with the rows left out first; issue 21; script/bench here: 0 rows written and 0.16-0.17 MB of WAL for a re-merge of
    /// 1,000,000 lines, at 3.5-4.8x the speed of the plain ingest). <c>MERGE</c> is not used: PostgreSQL 15's has no RETURNING, and it races
    /// with itself under concurrency.
    /// </summary>
    sealed class Named(int topA, int topB)
    {
        int _maxA, _maxB;
        bool _staged, _stagedThisBatch;

        public static async Task<Named> StartAsync(NpgsqlConnection connection, CancellationToken ct)
        {
            await using var top = new NpgsqlCommand(
                "SELECT (SELECT coalesce(max(id), 0) FROM a), (SELECT coalesce(max(id), 0) FROM b)", connection);
            await using var reader = await top.ExecuteReaderAsync(ct);
            await reader.ReadAsync(ct);
            return new Named(reader.GetInt32(0), reader.GetInt32(1));
        }

        public async Task<(RowChanges A, RowChanges B)> CopyAsync(NpgsqlConnection connection, NewRows batch, Resolution resolution,
            CancellationToken ct)
        {
            // The As first, then their Bs: a B's foreign key needs its A.
            var (freshA, staged) = (0L, new Range());
            foreach (var (id, _, _) in batch.Heads())
            {
                _maxA = Math.Max(_maxA, id);
                if (id > topA)
                    freshA++;
                else
                    staged.Add(id);
            }
            if (freshA > 0)
                await CopyAsAsync(connection, batch, fresh: true, ct);
            var a = new RowChanges(freshA, 0, 0);
            if (staged.Count > 0)
            {
                await StageAsync(connection, ct);
                await CopyAsAsync(connection, batch, fresh: false, ct);
                a = Add(a, await ResolveAsync(connection, "a", "data", staged, resolution, ct));
            }

            long freshB = 0;
            staged = new Range();
            foreach (var (id, _) in batch.Bs())
            {
                _maxB = Math.Max(_maxB, id);
                if (id > topB)
                    freshB++;
                else
                    staged.Add(id);
            }
            if (freshB > 0)
                await CopyBsAsync(connection, batch, fresh: true, ct);
            var b = new RowChanges(freshB, 0, 0);
            if (staged.Count > 0)
            {
                await StageAsync(connection, ct);
                await CopyBsAsync(connection, batch, fresh: false, ct);
                b = Add(b, await ResolveAsync(connection, "b", "a_id, data", staged, resolution, ct));
            }
            if (_stagedThisBatch)
                await new NpgsqlCommand("TRUNCATE ingest_a, ingest_b", connection).ExecuteNonQueryAsync(ct);
            _stagedThisBatch = false;
            return (a, b);
        }

        /// <summary>
        /// Copies the batch's A whose ids are above the table's largest (<paramref name="fresh"/>) straight into a, or the
        /// others, with their line, into the staging table.
        /// </summary>
        async Task CopyAsAsync(NpgsqlConnection connection, NewRows batch, bool fresh, CancellationToken ct)
        {
            await using var copy = await connection.BeginBinaryImportAsync(
                fresh ? "COPY a (id, data) FROM STDIN (FORMAT BINARY)" : "COPY ingest_a (id, data, line) FROM STDIN (FORMAT BINARY)", ct);
            foreach (var (id, line, data, _) in batch.As())
                if (id > topA == fresh)
                {
                    copy.StartRow();
                    copy.Write(id, NpgsqlDbType.Integer);
                    WriteText(copy, data);
                    if (!fresh)
                        copy.Write(line, NpgsqlDbType.Integer);
                }
            await copy.CompleteAsync(ct);
        }

        /// <summary>The same for the batch's Bs, each with its A's id.</summary>
        async Task CopyBsAsync(NpgsqlConnection connection, NewRows batch, bool fresh, CancellationToken ct)
        {
            await using var copy = await connection.BeginBinaryImportAsync(fresh
                ? "COPY b (id, a_id, data) FROM STDIN (FORMAT BINARY)"
                : "COPY ingest_b (id, a_id, data, line) FROM STDIN (FORMAT BINARY)", ct);
            foreach (var (id, aId, line, data) in BsWithParents(batch))
                if (id > topB == fresh)
                {
                    copy.StartRow();
                    copy.Write(id, NpgsqlDbType.Integer);
                    copy.Write(aId, NpgsqlDbType.Integer);
                    WriteText(copy, data);
                    if (!fresh)
                        copy.Write(line, NpgsqlDbType.Integer);
                }
            await copy.CompleteAsync(ct);
        }

        /// <summary>The Bs with their A's id and line.</summary>
        static IEnumerable<(int Id, int AId, int Line, ReadOnlyMemory<char>? Data)> BsWithParents(NewRows batch)
        {
            using var bs = batch.Bs().GetEnumerator();
            foreach (var (aId, line, count) in batch.Heads())
                for (var k = 0; k < count && bs.MoveNext(); k++)
                    yield return (bs.Current.Id, aId, line, bs.Current.Data);
        }

        /// <summary>The temporary tables, once per ingest; dropped at its commit or rollback, so no session keeps them.</summary>
        async Task StageAsync(NpgsqlConnection connection, CancellationToken ct)
        {
            _stagedThisBatch = true;
            if (_staged)
                return;
            _staged = true;
            await new NpgsqlCommand("""
                CREATE TEMP TABLE ingest_a (id int, data varchar, line int) ON COMMIT DROP;
                CREATE TEMP TABLE ingest_b (id int, a_id int, data varchar, line int) ON COMMIT DROP;
                """, connection).ExecuteNonQueryAsync(ct);
        }

        /// <summary>
        /// Moves the staged rows of <paramref name="table"/> in as the resolution says. The stored rows are looked up by id
        /// within the batch's id range, so that PostgreSQL reads that stretch of the primary key, not the whole table.
        /// </summary>
        static async Task<RowChanges> ResolveAsync(NpgsqlConnection connection, string table, string columns, Range ids,
            Resolution resolution, CancellationToken ct)
        {
            var cur = $"{table}.id = t.id AND {table}.id BETWEEN $1 AND $2";
            var differs = string.Join(" OR ", columns.Split(", ").Select(c => $"{table}.{c} IS DISTINCT FROM t.{c}"));
            var copied = $"t.{columns.Replace(", ", ", t.")}";
            if (resolution == Resolution.None)
            {
                await using (var clash = new NpgsqlCommand(
                    $"SELECT t.id, t.line FROM ingest_{table} t JOIN {table} ON {cur} ORDER BY t.line LIMIT 1", connection))
                {
                    clash.Parameters.Add(new() { Value = ids.Low });
                    clash.Parameters.Add(new() { Value = ids.High });
                    await using var found = await clash.ExecuteReaderAsync(ct);
                    if (await found.ReadAsync(ct))
                        throw new IdExistsException(table, found.GetInt32(0), found.GetInt32(1));
                }
                await using var insert = new NpgsqlCommand(
                    $"INSERT INTO {table} (id, {columns}) SELECT t.id, {copied} FROM ingest_{table} t", connection);
                return new RowChanges(await insert.ExecuteNonQueryAsync(ct), 0, 0);
            }
            var sql = resolution switch
            {
                Resolution.IgnoreDuplicates => $"""
                    WITH added AS (
                        INSERT INTO {table} (id, {columns}) SELECT t.id, {copied} FROM ingest_{table} t
                        WHERE NOT EXISTS (SELECT FROM {table} WHERE {cur})
                        ON CONFLICT (id) DO NOTHING RETURNING 1)
                    SELECT (SELECT count(*) FROM added), 0, (SELECT count(*) FROM ingest_{table})
                    """,
                _ => $"""
                    WITH changed AS (
                        INSERT INTO {table} AS cur (id, {columns})
                        SELECT t.id, {copied} FROM ingest_{table} t LEFT JOIN {table} ON {cur}
                        WHERE {table}.id IS NULL OR {differs}
                        ON CONFLICT (id) DO UPDATE SET {string.Join(", ", columns.Split(", ").Select(c => $"{c} = excluded.{c}"))}
                        RETURNING (cur.xmax = 0) AS inserted)
                    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), (SELECT count(*) FROM ingest_{table})
                    FROM changed
                    """,
            };
            await using var command = new NpgsqlCommand(sql, connection)
            {
                Parameters = { new() { Value = ids.Low }, new() { Value = ids.High } },
            };
            await using var reader = await command.ExecuteReaderAsync(ct);
            await reader.ReadAsync(ct);
            var (inserted, updated, staged) = (reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2));
            return new RowChanges(inserted, updated, staged - inserted - updated);
        }

        /// <summary>
        /// Moves each sequence past the largest id the body named, so that the next row without an id gets a free one
        /// (setval is not transactional: a rolled-back ingest leaves a gap, never a collision).
        /// </summary>
        public async Task AdvanceSequencesAsync(NpgsqlConnection connection, CancellationToken ct)
        {
            await using var advance = new NpgsqlCommand("""
                SELECT setval('a_id_seq', greatest($1, (SELECT last_value FROM a_id_seq))),
                       setval('b_id_seq', greatest($2, (SELECT last_value FROM b_id_seq)))
                """, connection)
            {
                Parameters = { new() { Value = (long)_maxA }, new() { Value = (long)_maxB } },
            };
            await advance.ExecuteNonQueryAsync(ct);
        }
    }

    /// <summary>The lowest and highest of some ids.</summary>
    sealed class Range
    {
        public int Low = int.MaxValue, High = int.MinValue;
        public long Count;

        public void Add(int id)
        {
            (Low, High) = (Math.Min(Low, id), Math.Max(High, id));
            Count++;
        }
    }

    static void WriteText(NpgsqlBinaryImporter copy, ReadOnlyMemory<char>? text)
    {
        if (text is { } chars)
            copy.Write(chars, NpgsqlDbType.Varchar);
        else
            copy.WriteNull();
    }
}
