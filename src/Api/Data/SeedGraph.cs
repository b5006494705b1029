using System.Text;
using Microsoft.EntityFrameworkCore;

namespace AsyncOrmApi.Data;

/// <summary>The seed program's graph: A "a1" with two B, "a2" with one, "a3" with two (B.data stays null).</summary>
public static class SeedGraph
{
    /// <summary>One copy of the graph, as new entities.</summary>
    public static A[] Build() =>
    [
        new() { Data = "a1", Bs = [new(), new()] },
        new() { Data = "a2", Bs = [new()] },
        new() { Data = "a3", Bs = [new(), new()] },
    ];

    /// <summary>
    /// Adds <paramref name="copies"/> copies of the graph in one transaction and counts the rows added. One
    /// copy goes through EF Core's unit of work, like the seed's <c>session.add_all</c>; many copies go in as
    /// an NDJSON ingest of them would, through binary COPY (<see cref="Ingest"/>), because per-row round trips
    /// and change tracking cost orders of magnitude more at that size.
    /// </summary>
    /// <param name="keyAside">The largest seed into empty tables that sets b's foreign key aside (<see cref="KeyAside"/>); 0: none.</param>
    public static async Task<(int A, int B)> AddCopiesAsync(this AppDb db, int copies, int keyAside = 0, CancellationToken ct = default)
    {
        var graph = Build();
        var added = (copies * graph.Length, copies * graph.Sum(a => a.Bs.Count));
        if (copies == 1)
        {
            db.A.AddRange(graph);
            await db.SaveChangesAsync(ct);
            return added;
        }

        // a takes ids from its own sequence in copy order, and each b follows its parent, so the result reads exactly
        // like `copies` consecutive single seeds and a later plain seed carries on from there. Binary COPY, not the
        // set-based INSERT … SELECT it replaced, which inserts row by row where COPY fills pages in bulk.
        await using var tx = await db.BeginWriteAsync(ct);
        var foreignKey = copies <= keyAside ? await KeyAside.SetAsideAsync(db, ct) : null;
        await db.AddAllAsync(Copies(graph, copies).ToAsyncEnumerable(), Resolution.None, ct);
        if (foreignKey is not null)
            await foreignKey.RestoreAsync(db, ct);
        // Fresh statistics, so the next reads are planned for the rows just added rather than for the
        // tables as they were (autovacuum would get there, but only after a minute or so).
        await db.Database.ExecuteSqlRawAsync("ANALYZE a, b", ct);
        await tx.CommitAsync(ct);
        return added;
    }

    /// <summary>The copies in batches of <see cref="NewRows.BatchA"/> A, as an ingest's; line numbers count A from 1.</summary>
    static IEnumerable<NewRows> Copies(A[] graph, int copies)
    {
        var data = graph.Select(a => Encoding.UTF8.GetBytes(a.Data!)).ToArray();
        for (int copy = 0, line = 1; copy < copies;)
        {
            var rows = new NewRows();
            for (; copy < copies && rows.A < NewRows.BatchA; copy++)
                for (var i = 0; i < graph.Length; i++)
                {
                    rows.StartA(line++);
                    rows.SetData(data[i]);
                    for (var b = 0; b < graph[i].Bs.Count; b++)
                        rows.AddNullB(0);
                    rows.EndA();
                }
            yield return rows;
        }
    }
}
