using System.Data;
using System.Diagnostics;
using Npgsql;
using System.Runtime.CompilerServices;
using Microsoft.EntityFrameworkCore;

namespace AsyncOrmApi.Data;

/// <summary>The reads of A with their Bs: Npgsql's reader straight on the DbContext's connection, grouped as rows arrive.</summary>
public static class Queries
{
    /// <summary>
    /// The A with id &gt; <paramref name="after"/>, with their Bs, A by id and Bs by id: what GET /a/stream sends, and where
    /// a cut stream resumes. Read a batch of rows at a time, each batch a query that starts after the last whole A, all in
    /// one snapshot: the batch doubles while the client keeps up (up to <see cref="MaxFetch"/> rows) and halves while it
    /// falls behind, so that PostgreSQL runs ahead of a slow client by one small batch, and of a fast one by one large batch.
    /// </summary>
    /// <remarks>
    /// Not the query read to its end, as before: a client reading 1 KB/s let PostgreSQL fill the socket buffers between it
    /// and the API (~6-10 MB a stream on loopback). When 50 such clients left at once, the API cancelled 50 queries
    /// (Npgsql's cancel request: a connection of its own, 1.1-1.3 s each on the busy 2-core machine) and then read through
    /// 300-500 MB of rows to reach the cancel's error: /health/live waited 2-11 s (issue 16). In batches, a client that
    /// leaves costs the rest of one batch, nothing is cancelled, and /health/live answered in 27-38 ms right after.
    /// <para>Batches of keyset queries, not a cursor's FETCHes: PostgreSQL runs a FETCH as a utility statement, which
    /// stores its whole batch in a tuplestore (spilling past work_mem) before it sends the first row. That was 15-20% of
    /// the stream's time at PostgreSQL, the stream's bottleneck: psql read the query in 0.58-0.59 s, through FETCHes of
    /// 8,000-128,000 rows in 0.67-0.75 s; the API streamed 300,000 A in 0.69 s through the cursor, 0.46 s now, against
    /// 0.62 s for COPY TO (medians of 9, alternating; issue 20).</para>
    /// <para>Each batch waits for the stream's <paramref name="turn"/> at PostgreSQL (see <see cref="FetchTurn"/>), which the
    /// consumer gives back while it waits for its client; whoever enumerates disposes it.</para>
    /// </remarks>
    public static async IAsyncEnumerable<ADto> AllA(AppDb db, int after, FetchTurn turn, Action<ReadSnapshot>? snapshot = null,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        if (!await turn.TakeAsync(ct))
            yield break;
        // One REPEATABLE READ transaction: one snapshot whatever the batches, the same rows as one query.
        await using var transaction = await db.Database.BeginTransactionAsync(IsolationLevel.RepeatableRead, ct);
        var connection = (NpgsqlConnection)db.Database.GetDbConnection();
        if (snapshot is not null)
        {
            // The transaction's snapshot, taken by this first statement, is the one every batch reads.
            await using var position = new NpgsqlCommand($"SELECT {ReadSnapshot.Columns}", connection);
            await using var reader = await position.ExecuteReaderAsync(ct);
            await reader.ReadAsync(ct);
            snapshot(new ReadSnapshot(reader.GetString(0), reader.GetString(1)));
        }
        // Npgsql's reader straight, grouping as rows arrive, in this one iterator: EF Core's SqlQueryRaw for each batch
        // streamed 300,000 A in 1.1 s against 0.4 s, and each further async iterator between the rows and the response
        // cost more than the batches' round trips. b.a_id > $1: see PageSql.
        await using var batchRows = new NpgsqlCommand("""
            SELECT a.id, a.data, b.id, b.data
            FROM a LEFT JOIN b ON b.a_id = a.id AND b.a_id > $1
            WHERE a.id > $1
            ORDER BY a.id
            LIMIT $2
            """, connection) { Parameters = { new() { Value = after }, new() { Value = MinFetch } } };
        for (var batch = MinFetch; !ct.IsCancellationRequested;)
        {
            batchRows.Parameters[0].Value = after;
            batchRows.Parameters[1].Value = batch;
            if (!await turn.TakeAsync(ct))
                yield break;
            var started = Stopwatch.GetTimestamp();
            var rows = 0;
            ADto? current = null;
            // Not given the token: the rest of a batch is read whatever happens, and a token would make each read that
            // meets it throw on the way out, for nothing.
            await using (var reader = await batchRows.ExecuteReaderAsync(CancellationToken.None))
            {
                while (await reader.ReadAsync(CancellationToken.None))
                {
                    rows++;
                    var aId = reader.GetInt32(0);
                    if (current?.Id != aId)
                    {
                        if (current is not null)
                        {
                            yield return InOrder(current);
                            after = current.Id;
                        }
                        current = new ADto(aId, reader.IsDBNull(1) ? null : reader.GetString(1), []);
                    }
                    if (!reader.IsDBNull(2))
                        current.Bs.Add(new BDto(reader.GetInt32(2), aId, reader.IsDBNull(3) ? null : reader.GetString(3)));
                }
            }
            if (current is null || ct.IsCancellationRequested)
                break;
            if (rows < batch)
            {
                turn.Give();
                yield return InOrder(current);                 // the last A, whole
                break;
            }
            // The batch ended inside its last A, or just after it, and the next batch starts at that A again. Unless the A
            // filled the batch alone: its Bs are then read in one query (it is held whole before it is written anyway).
            if (rows == current.Bs.Count)
            {
                current.Bs.Clear();
                if (!await turn.TakeAsync(ct))                  // given back if the client was slow in this batch
                    yield break;
                await using var bs = new NpgsqlCommand("SELECT id, data FROM b WHERE a_id = $1", connection)
                    { Parameters = { new() { Value = current.Id } } };
                await using (var reader = await bs.ExecuteReaderAsync(CancellationToken.None))
                    while (await reader.ReadAsync(CancellationToken.None))
                        current.Bs.Add(new BDto(reader.GetInt32(0), current.Id, reader.IsDBNull(1) ? null : reader.GetString(1)));
                yield return InOrder(current);
                after = current.Id;
            }
            turn.Give();
            // The time includes the client's: the consumer writes each A before the next is read.
            var took = Stopwatch.GetElapsedTime(started);
            batch = took < KeepingUp ? Math.Min(batch * 2, MaxFetch) : took > FallingBehind ? Math.Max(batch / 2, MinFetch) : batch;
        }
        if (!ct.IsCancellationRequested)
            await transaction.CommitAsync(CancellationToken.None);  // else the transaction rolls back
    }

    /// <summary>
    /// The A with its Bs in id order. The stream's query orders by A only: its Bs come in ix_b_a_id's order, which is
    /// their id order unless rows were moved, and sorting them here, when they are not, is cheaper than PostgreSQL's
    /// incremental sort of every A's rows (10-13% of its time for 300,000 A).
    /// </summary>
    static ADto InOrder(ADto a)
    {
        for (var i = 1; i < a.Bs.Count; i++)
            if (a.Bs[i - 1].Id > a.Bs[i].Id)
            {
                a.Bs.Sort((x, y) => x.Id.CompareTo(y.Id));
                break;
            }
        return a;
    }

    /// <summary>Rows of a, b (one per B, one for an A without Bs) per batch: 1,000 rows are ~50 KB; 128,000 are ~6 MB.</summary>
    const int MinFetch = 1_000, MaxFetch = 128_000;

    static readonly TimeSpan KeepingUp = TimeSpan.FromMilliseconds(100), FallingBehind = TimeSpan.FromMilliseconds(500);

    /// <summary>
    /// One keyset page of GET /a: at most <paramref name="take"/> A with id &gt; <paramref name="after"/>, with their Bs, and
    /// at most <see cref="MaxRows"/> rows in all; <c>More</c> when A follow it. One round trip, as cheap at the table's end
    /// as at its start (the LIMIT on A is inside the join, the LIMIT on rows outside it).
    /// </summary>
    public static async Task<Page> PageAsync(AppDb db, int after, int take, CancellationToken ct, Action<ReadSnapshot>? snapshot = null)
    {
        // One A more than the page tells whether another page follows; its Bs are the only rows read in vain.
        var (page, _, cut) = await ReadAsync(db, after, take + 1, snapshot, ct);
        if (cut is { } last)
            return new Page(page, last.BsHasMore != true || await db.A.AnyAsync(a => a.Id > last.Id, ct));
        if (page.Count <= take)
            return new Page(page, false);
        page.RemoveAt(take);
        return new Page(page, true);
    }

    /// <summary>The first A (lowest id) with its Bs (at most <see cref="MaxRows"/>) and its row version, or null when a is empty.</summary>
    public static async Task<Versioned?> FirstAsync(AppDb db, CancellationToken ct, Action<ReadSnapshot>? snapshot = null)
    {
        var (page, version, _) = await ReadAsync(db, int.MinValue, 1, snapshot, ct);
        return page is [var first] ? new Versioned(first, version) : null;
    }

    /// <summary>
    /// The most rows of b (one per B, one for an A without Bs) that a page or GET /a/first holds, so that their memory is
    /// bounded whatever the Bs per A: four A of 340,000 B each made a 46 MB GET /a?limit=4 before (issue 16).
    /// </summary>
    public const int MaxRows = 50_000;

    /// <summary>
    /// Reads at most <paramref name="take"/> A and <see cref="MaxRows"/> rows, grouped, with the first A's version. When the
    /// rows ran out first, the page ends with the last whole A (<c>Cut</c> is the first one left out), or, when a single
    /// A has more Bs than that, it holds that A with its first <see cref="MaxRows"/> Bs and <c>BsHasMore</c> (Stripe's
    /// has_more for a nested list); <c>Cut</c> is then that A.
    /// </summary>
    static async Task<(List<ADto> Page, uint Version, ADto? Cut)> ReadAsync(AppDb db, int after, int take, Action<ReadSnapshot>? snapshot,
        CancellationToken ct)
    {
        var page = new List<ADto>();
        uint version = 0;
        var rows = 0;
        ADto? current = null;
        // The DbContext's connection: a standby's while one is lent, and in the request's transaction when one is open.
        // Opened here when closed, not through EF Core's OpenConnectionAsync, which searches the connection string for
        // its ambient-transaction setting on every open (HandleAmbientTransactions, 0.5% of GET /a's CPU in perf).
        var connection = (NpgsqlConnection)db.Database.GetDbConnection();
        var opened = connection.State == ConnectionState.Closed;
        if (opened)
            await connection.OpenAsync(ct);
        try
        {
            await using var command = new NpgsqlCommand(snapshot is null ? PageSql : SnapshotPageSql, connection)
            {
                Parameters =
                {
                    new NpgsqlParameter<int> { TypedValue = after },
                    new NpgsqlParameter<int> { TypedValue = take },
                    new NpgsqlParameter<int> { TypedValue = MaxRows + 1 },
                },
            };
            await using var reader = await command.ExecuteReaderAsync(ct);
            while (await reader.ReadAsync(ct))
            {
                if (snapshot is not null && reader.IsDBNull(0))
                {
                    snapshot(new ReadSnapshot(reader.GetString(1), reader.GetString(4)));
                    continue;
                }
                rows++;
                var aId = reader.GetInt32(0);
                if (current?.Id != aId)
                {
                    if (page.Count == 0)
                        version = reader.GetFieldValue<uint>(2);
                    page.Add(current = new ADto(aId, reader.IsDBNull(1) ? null : reader.GetString(1), []));
                }
                if (!reader.IsDBNull(3))
                    current.Bs.Add(new BDto(reader.GetInt32(3), aId, reader.IsDBNull(4) ? null : reader.GetString(4)));
            }
        }
        finally
        {
            if (opened)
                await connection.CloseAsync();
        }
        if (rows <= MaxRows)
            return (page, version, null);
        if (page.Count > 1)
        {
            var partial = page[^1];
            page.RemoveAt(page.Count - 1);
            return (page, version, partial);
        }
        page[0].Bs.RemoveRange(MaxRows, page[0].Bs.Count - MaxRows);
        page[0] = page[0] with { BsHasMore = true };
        return (page, version, page[0]);
    }

    /// <summary>A page of A, and whether more follow it.</summary>
    public sealed record Page(List<ADto> As, bool More);

    /// <summary>
    /// One row per B (one for an A without Bs), with the A's row version (xmin) for GET /a/first's ETag: at most
    /// <c>$2</c> A with id &gt; <c>$1</c>, and at most <c>$3</c> rows.
    /// </summary>
    /// <remarks>
    /// Npgsql's reader straight, as the stream: through an EF Core compiled query of the same join, GET /a took 126 µs of the
    /// API's CPU a request, 83 µs like this, and served 1.38 times the requests (medians of 7 alternating 5 s rounds, wrk -t1
    /// -c32; issue 20). perf showed where: EF Core built the query's delegates again on each run
    /// (DynamicMethod.CreateDelegate, 4.7% of the CPU), and its command, reader and execution-strategy layers and Npgsql's
    /// rewriting of its named parameters made up most of the rest.
    /// <para>b.a_id &gt; $1 says again what the join implies, so that PostgreSQL starts its scan of ix_b_a_id there: without
    /// it, a merge join read b's index from its first entry for every page, 37 ms for the last of 300,000 A against 0.8 ms
    /// with it (EXPLAIN ANALYZE of the generic plan; script/bench's last page against the first went from 5.4 to ~1).</para>
    /// </remarks>
    const string PageSql = """
        SELECT a0.id, a0.data, a0.xmin, b0.id, b0.data
        FROM (SELECT id, data, xmin FROM a WHERE id > $1 ORDER BY id LIMIT $2) AS a0
        LEFT JOIN b AS b0 ON b0.a_id = a0.id AND b0.a_id > $1
        ORDER BY a0.id, b0.id
        LIMIT $3
        """;

    /// <summary>
    /// <see cref="PageSql"/> after one row of the statement's own snapshot (id null): one statement, so one snapshot for
    /// both, and still one round trip.
    /// </summary>
    static readonly string SnapshotPageSql = $"""
        SELECT NULL::int, s.snapshot, NULL::xid, NULL::int, s.lsn FROM (SELECT {ReadSnapshot.Columns}) AS s
        UNION ALL
        ({PageSql})
        """;

    /// <summary>An A and the version of its row, for ETags.</summary>
    public sealed record Versioned(ADto A, uint Version);
}
