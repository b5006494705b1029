using System.Runtime.CompilerServices;
using Microsoft.EntityFrameworkCore;

namespace AsyncOrmApi.Data;

/// <summary>The reads, compiled once: EF Core skips translating the LINQ on every request.</summary>
public static class Queries
{
    /// <summary>
    /// The A with id &gt; <paramref name="after"/>, with their Bs, A by id and Bs by id, as they arrive from one
    /// LEFT JOIN: what GET /a/stream sends, and where a cut stream resumes.
    /// </summary>
    public static IAsyncEnumerable<ADto> AllA(AppDb db, int after, CancellationToken ct = default) =>
        Group(db, RowsAfter(db, after), ct);

    /// <summary>
    /// One keyset page of GET /a: at most <paramref name="take"/> A with id &gt; <paramref name="after"/>, with their Bs, and
    /// at most <see cref="MaxRows"/> rows in all; <c>More</c> when A follow it. One round trip, as cheap at the table's end
    /// as at its start (the LIMIT on A is inside the join, the LIMIT on rows outside it).
    /// </summary>
    public static async Task<Page> PageAsync(AppDb db, int after, int take, CancellationToken ct)
    {
        // One A more than the page tells whether another page follows; its Bs are the only rows read in vain.
        var (page, _, cut) = await ReadAsync(db, after, take + 1, ct);
        if (cut is { } last)
            return new Page(page, last.BsHasMore != true || await db.A.AnyAsync(a => a.Id > last.Id, ct));
        if (page.Count <= take)
            return new Page(page, false);
        page.RemoveAt(take);
        return new Page(page, true);
    }

    /// <summary>The first A (lowest id) with its Bs (at most <see cref="MaxRows"/>) and its row version, or null when a is empty.</summary>
    public static async Task<Versioned?> FirstAsync(AppDb db, CancellationToken ct)
    {
        var (page, version, _) = await ReadAsync(db, int.MinValue, 1, ct);
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
    static async Task<(List<ADto> Page, uint Version, ADto? Cut)> ReadAsync(AppDb db, int after, int take, CancellationToken ct)
    {
        var page = new List<ADto>();
        uint version = 0;
        var rows = 0;
        ADto? current = null;
        await foreach (var row in PageRows(db, after, take, MaxRows + 1).WithCancellation(ct))
        {
            rows++;
            if (current?.Id != row.AId)
            {
                if (page.Count == 0)
                    version = row.Version;
                page.Add(current = new ADto(row.AId, row.AData, []));
            }
            if (row.BId is { } bId)
                current.Bs.Add(new BDto(bId, row.AId, row.BData));
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
    /// Groups the flat rows into A as they arrive. EF Core can nest the Bs itself, but its collection
    /// projection streamed 300,000 A at less than half the speed of grouping the flat rows, which already
    /// arrive ordered by A (script/bench).
    /// </summary>
    static async IAsyncEnumerable<ADto> Group(AppDb db, IAsyncEnumerable<JoinedRow> source, [EnumeratorCancellation] CancellationToken ct)
    {
        // The token stops the query through StopQueryOn, not through the reads: given to them, it made each of 50 streams
        // whose clients left at once throw ~19 exceptions on its way out, 0.2-0.3 s of CPU in all (issue 16).
        await using var rows = source.GetAsyncEnumerator(CancellationToken.None);
        // Declared after the rows so that it is disposed before them, while the connection is still ours.
        await using var stop = db.StopQueryOn(ct);
        ADto? current = null;
        while (await rows.MoveNextAsync())
        {
            var row = rows.Current;
            if (current?.Id != row.AId)
            {
                if (current is not null)
                    yield return current;
                current = new ADto(row.AId, row.AData, []);
            }
            if (row.BId is { } bId)
                current.Bs.Add(new BDto(bId, row.AId, row.BData));
        }
        if (current is not null)
            yield return current;
    }

    /// <summary>One row per B (one for an A without Bs), the columns the wire needs and no others.</summary>
    record struct JoinedRow(int AId, string? AData, int? BId, string? BData);

    // b.a_id > after says again what the join implies, so that PostgreSQL starts its scan of ix_b_a_id there: without it, a
    // merge join read b's index from its first entry for every page, 37 ms for the last of 300,000 A against 0.8 ms
    // with it (EXPLAIN ANALYZE of the generic plan; script/bench's last page against the first went from 5.4 to ~1).
    static readonly Func<AppDb, int, IAsyncEnumerable<JoinedRow>> RowsAfter = EF.CompileAsyncQuery((AppDb db, int after) =>
        from a in db.A.Where(a => a.Id > after)
        from b in db.B.Where(b => b.AId == a.Id && b.AId > after).DefaultIfEmpty()
        orderby a.Id, b.Id
        select new JoinedRow(a.Id, a.Data, b.Id, b.Data));

    /// <summary>A row of a page: <see cref="JoinedRow"/> with the A's row version, for GET /a/first's ETag.</summary>
    record struct PageRow(int AId, string? AData, uint Version, int? BId, string? BData);

    static readonly Func<AppDb, int, int, int, IAsyncEnumerable<PageRow>> PageRows = EF.CompileAsyncQuery((AppDb db, int after, int take, int rows) =>
        (from a in db.A.Where(a => a.Id > after).OrderBy(a => a.Id).Take(take)
         from b in db.B.Where(b => b.AId == a.Id && b.AId > after).DefaultIfEmpty()
         orderby a.Id, b.Id
         select new PageRow(a.Id, a.Data, EF.Property<uint>(a, AppDb.Version), b.Id, b.Data)).Take(rows));

    /// <summary>An A and the version of its row, for ETags.</summary>
    public sealed record Versioned(ADto A, uint Version);
}
