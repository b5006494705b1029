using System.Data;
using System.Runtime.CompilerServices;
using Microsoft.EntityFrameworkCore;
using Npgsql;

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
    /// At most <paramref name="take"/> A with id &gt; <paramref name="after"/>, with their Bs: one keyset page of
    /// GET /a, one round trip, as cheap at the table's end as at its start (the LIMIT is inside the join).
    /// </summary>
    public static IAsyncEnumerable<ADto> PageA(AppDb db, int after, int take, CancellationToken ct = default) =>
        Group(db, PageRows(db, after, take), ct);

    /// <summary>
    /// Groups the flat rows into A as they arrive. EF Core can nest the Bs itself, but its collection
    /// projection streamed 300,000 A at less than half the speed of grouping the flat rows, which already
    /// arrive ordered by A (script/bench).
    /// </summary>
    static async IAsyncEnumerable<ADto> Group(AppDb db, IAsyncEnumerable<JoinedRow> source, [EnumeratorCancellation] CancellationToken ct)
    {
        await using var rows = source.GetAsyncEnumerator(ct);
        // Declared after the rows so that it is disposed before them, while the connection is still ours.
        await using var stop = ct.Register(() => CancelRunningQuery(db));
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

    /// <summary>
    /// Stops the query on the server when the client has gone: otherwise disposing the reader part-way makes
    /// Npgsql read the rest of the result, and PostgreSQL runs the query to its end for nobody.
    /// </summary>
    static void CancelRunningQuery(AppDb db)
    {
        if (db.Database.GetDbConnection() is not NpgsqlConnection { State: ConnectionState.Open } streaming)
            return;
        try
        {
            using var other = (NpgsqlConnection)((ICloneable)streaming).Clone();
            other.Open();
            using var cancel = new NpgsqlCommand("SELECT pg_cancel_backend($1)", other) { Parameters = { new() { Value = streaming.ProcessID } } };
            cancel.ExecuteNonQuery();
        }
        catch (Exception)
        {
            // Best effort: without it Npgsql still ends the query, only later. Nothing may escape: this runs as a
            // cancellation callback, on a request timeout's timer thread too, where an exception ends the process
            // (as it did when the connection closed between the check above and ProcessID).
        }
    }

    /// <summary>One row per B (one for an A without Bs), the columns the wire needs and no others.</summary>
    record struct JoinedRow(int AId, string? AData, int? BId, string? BData);

    static readonly Func<AppDb, int, IAsyncEnumerable<JoinedRow>> RowsAfter = EF.CompileAsyncQuery((AppDb db, int after) =>
        from a in db.A.Where(a => a.Id > after)
        from b in db.B.Where(b => b.AId == a.Id).DefaultIfEmpty()
        orderby a.Id, b.Id
        select new JoinedRow(a.Id, a.Data, b.Id, b.Data));

    static readonly Func<AppDb, int, int, IAsyncEnumerable<JoinedRow>> PageRows = EF.CompileAsyncQuery((AppDb db, int after, int take) =>
        from a in db.A.Where(a => a.Id > after).OrderBy(a => a.Id).Take(take)
        from b in db.B.Where(b => b.AId == a.Id).DefaultIfEmpty()
        orderby a.Id, b.Id
        select new JoinedRow(a.Id, a.Data, b.Id, b.Data));

    /// <summary>The first A (lowest id) with its Bs and its row version, or null when a is empty.</summary>
    public static readonly Func<AppDb, CancellationToken, Task<Versioned?>> FirstA =
        EF.CompileAsyncQuery((AppDb db, CancellationToken ct) => db.A.OrderBy(a => a.Id)
            .Select(a => new Versioned(
                new ADto(a.Id, a.Data, a.Bs.OrderBy(b => b.Id).Select(b => new BDto(b.Id, b.AId, b.Data)).ToList()),
                EF.Property<uint>(a, AppDb.Version)))
            .FirstOrDefault());

    /// <summary>An A and the version of its row, for ETags.</summary>
    public sealed record Versioned(ADto A, uint Version);
}
