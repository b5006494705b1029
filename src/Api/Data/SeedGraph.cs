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
    /// copy goes through EF Core's unit of work, like the seed's <c>session.add_all</c>; many copies are
    /// inserted set-based on the server, because per-row round trips and change tracking cost orders of
    /// magnitude more at that size.
    /// </summary>
    public static async Task<(int A, int B)> AddCopiesAsync(this AppDb db, int copies, CancellationToken ct = default)
    {
        var graph = Build();
        var added = (copies * graph.Length, copies * graph.Sum(a => a.Bs.Count));
        if (copies == 1)
        {
            db.A.AddRange(graph);
            await db.SaveChangesAsync(ct);
            return added;
        }

        // Set-based, on the server, from the same graph as Build(): a takes ids from its own sequence in
        // copy order, and each b follows its parent in id order, so the result reads exactly like
        // `copies` consecutive single seeds and a later plain seed carries on from there.
        var data = graph.Select(a => a.Data!).ToArray();
        var bsPerA = graph.Select(a => a.Bs.Count).ToArray();
        // A million copies are eight million rows: minutes, not the default 30 seconds.
        db.Database.SetCommandTimeout(TimeSpan.FromMinutes(10));
        await using var tx = await db.BeginWriteAsync(ct);
        await db.Database.ExecuteSqlAsync($"""
            WITH graph AS (
                SELECT * FROM unnest({data}::varchar[], {bsPerA}::int[]) WITH ORDINALITY AS g(data, bs, pos)
            ), new_a AS (
                INSERT INTO a (data)
                SELECT graph.data FROM generate_series(1, {copies}) AS copy(n) CROSS JOIN graph
                ORDER BY copy.n, graph.pos
                RETURNING id, data
            )
            INSERT INTO b (a_id)
            SELECT new_a.id FROM new_a JOIN graph USING (data) CROSS JOIN generate_series(1, graph.bs)
            ORDER BY new_a.id
            """, ct);
        // Fresh statistics, so the next reads are planned for the rows just added rather than for the
        // tables as they were (autovacuum would get there, but only after a minute or so).
        await db.Database.ExecuteSqlRawAsync("ANALYZE a, b", ct);
        await tx.CommitAsync(ct);
        return added;
    }
}
