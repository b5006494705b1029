using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;
using Microsoft.EntityFrameworkCore;

namespace AsyncOrmApi.Endpoints;

/// <summary>The seed's reads (selectinload, session.stream) and its one write (the first A renamed).</summary>
public static class AEndpoints
{
    public static IEndpointRouteBuilder MapA(this IEndpointRouteBuilder routes)
    {
        var a = routes.MapGroup("/a").WithTags("A");

        a.MapGet("/", GetAll).WithName("GetAllA")
            .WithSummary("Every A with its Bs, ordered by id (buffered eager load)");
        a.MapGet("/first", GetFirst).WithName("GetFirstA")
            .WithSummary("The first A (lowest id) with its Bs")
            .ProducesProblem(StatusCodes.Status404NotFound);
        a.MapGet("/stream", Stream).WithName("StreamA")
            .WithSummary("Every A with its Bs, streamed from the database as a JSON array or NDJSON")
            .WithDescription("Rows are sent as PostgreSQL returns them, in constant memory. "
                + "Send `Accept: application/x-ndjson` for one A per line instead of a JSON array.");
        a.MapPatch("/first", PatchFirst).WithName("PatchFirstA")
            .WithSummary("Sets the first A's data and commits")
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status404NotFound);

        return routes;
    }

    static async Task<Ok<List<ADto>>> GetAll(AppDb db, CancellationToken ct) =>
        TypedResults.Ok(await Queries.AllA(db).ToListAsync(ct));

    static async Task<Results<Ok<ADto>, ProblemHttpResult>> GetFirst(AppDb db, CancellationToken ct) =>
        await Queries.FirstA(db, ct) is { } first ? TypedResults.Ok(first) : Problems.NoA();

    static AStreamResult Stream(AppDb db) => new(Queries.AllA(db));

    static async Task<Results<Ok<ADto>, ValidationProblem, ProblemHttpResult>> PatchFirst(
        [FromBody] PatchA patch, AppDb db, CancellationToken ct)
    {
        if (Problems.Validate(patch) is { } invalid)
            return invalid;

        // Exactly one column of one row, and the answer read back in the same transaction: the row lock
        // taken by the UPDATE keeps what we return equal to what we wrote.
        await using var tx = await db.Database.BeginTransactionAsync(ct);
        var updated = await db.A
            .Where(a => a.Id == db.A.Min(x => x.Id))
            .ExecuteUpdateAsync(set => set.SetProperty(a => a.Data, patch.Data), ct);
        if (updated == 0)
            return Problems.NoA();
        var first = await Queries.FirstA(db, ct);
        await tx.CommitAsync(ct);
        return TypedResults.Ok(first!);
    }
}
