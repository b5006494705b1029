using System.Linq.Expressions;
using Microsoft.EntityFrameworkCore;

namespace AsyncOrmApi.Data;

/// <summary>The reads, compiled once: EF Core skips translating the LINQ on every request.</summary>
public static class Queries
{
    /// <summary>Entity to wire, in SQL: only the columns the DTOs carry are selected, nothing is tracked.</summary>
    static readonly Expression<Func<A, ADto>> ToDto = a =>
        new ADto(a.Id, a.Data, a.Bs.OrderBy(b => b.Id).Select(b => new BDto(b.Id, b.AId, b.Data)).ToList());

    /// <summary>Every A with its Bs, A by id and Bs by id: one LEFT JOIN, read as it arrives.</summary>
    public static readonly Func<AppDb, IAsyncEnumerable<ADto>> AllA =
        EF.CompileAsyncQuery((AppDb db) => db.A.OrderBy(a => a.Id).Select(ToDto));

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
