using System.Text;
using Microsoft.EntityFrameworkCore;
using Npgsql;

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
    /// <param name="keyAside">The largest seed into empty tables that sets b's foreign key aside (<see cref="ForeignKey"/>); 0: none.</param>
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
        var foreignKey = copies <= keyAside ? await ForeignKey.SetAsideAsync(db, ct) : null;
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

    /// <summary>
    /// b's foreign key, set aside for a bulk seed into empty tables and added back, checked once, in the same transaction:
    /// PostgreSQL's own advice for bulk loads ("Remove Foreign Key Constraints", Populating a Database).
    /// </summary>
    /// <remarks>
    /// With the key in place, each b row's check is a query of its own (executor start, index scan, <c>FOR KEY SHARE</c>):
    /// 60% of the backend's time in a seed (perf), and a same-shaped <c>COPY FROM</c> pays it alike, so the seed could only
    /// ever tie it (0.75-1.08 in script/bench). Added back, the key is checked by one anti-join over all of b: 1.38-1.76 of
    /// it now (three runs; issue 20). The price is that dropping the key locks a and b (ACCESS EXCLUSIVE) until the seed
    /// commits: reads wait for the seed, whose rows they could not see before its commit anyway (100,000 copies: a GET /a
    /// waited 5.4 s for a 5.6 s seed; with the key in place the seed took 11.3 s and 216 reads took 63 ms at most). So it
    /// is taken only up to Seed:MaxCopiesWithKeyAside copies, only when both tables are empty, and only if the locks come
    /// within 20 ms: a seed never waits for them with reads queued behind it,
    /// as a reset does not (a stream or an ingest holding the tables: the seed checks row by row instead).
    /// The key's name and definition are read from the catalog, so the seed program's own tables keep theirs.
    /// </remarks>
    sealed record ForeignKey(string Drop, string Restore)
    {
        const string Savepoint = "bulk_seed";
        const string Lock =
            "SELECT set_config('lock_timeout', '20ms', true); LOCK TABLE a, b IN ACCESS EXCLUSIVE MODE; SET LOCAL lock_timeout TO DEFAULT";

        /// <summary>Drops b's foreign key and returns it; null (nothing changed) when the tables are busy or not empty.</summary>
        public static async Task<ForeignKey?> SetAsideAsync(AppDb db, CancellationToken ct)
        {
            if (await FindAsync(db, ct) is null)
                return null;                               // rows to keep reading: no lock at all
            var tx = db.Database.CurrentTransaction!;
            await tx.CreateSavepointAsync(Savepoint, ct);
            ForeignKey? key;
            try
            {
                await db.Database.ExecuteSqlRawAsync(Lock, ct);
                // Again under the locks: a writer may have come first.
                key = await FindAsync(db, ct);
                if (key is not null)
                    await db.Database.ExecuteSqlRawAsync(key.Drop, ct);
            }
            catch (PostgresException e) when (e.SqlState is PostgresErrorCodes.LockNotAvailable or PostgresErrorCodes.InsufficientPrivilege)
            {
                key = null;                                // busy tables, or a role that may insert but not alter
            }
            if (key is null)
                await tx.RollbackToSavepointAsync(Savepoint, ct);   // the locks go; the seed checks row by row
            await tx.ReleaseSavepointAsync(Savepoint, ct);
            return key;
        }

        /// <summary>b's one foreign key to a, as the statements that drop and add it, when both tables are empty.</summary>
        /// <remarks>The statements are made from the catalog (format's %I quotes the name), not from anything a client sent.</remarks>
        static Task<ForeignKey?> FindAsync(AppDb db, CancellationToken ct) => db.Database.SqlQueryRaw<ForeignKey>("""
            SELECT format('ALTER TABLE b DROP CONSTRAINT %I', conname) AS "Drop",
                   format('ALTER TABLE b ADD CONSTRAINT %I %s', conname, pg_get_constraintdef(oid)) AS "Restore"
            FROM pg_constraint
            WHERE conrelid = 'b'::regclass AND confrelid = 'a'::regclass AND contype = 'f'
              AND NOT EXISTS (SELECT FROM a) AND NOT EXISTS (SELECT FROM b)
            """).SingleOrDefaultAsync(ct);

        /// <summary>Adds the key back as it was: PostgreSQL checks every row of b against a in one pass.</summary>
        public Task RestoreAsync(AppDb db, CancellationToken ct) => db.Database.ExecuteSqlRawAsync(Restore, ct);
    }
}
