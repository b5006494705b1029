using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;
using Microsoft.EntityFrameworkCore;

namespace AsyncOrmApi.Endpoints;

/// <summary>The seed's reads (selectinload, session.stream) and its one write (the first A renamed).</summary>
public static class AEndpoints
{
    /// <summary>A PATCH body holds one string; far more than that is a mistake or an attack, not data.</summary>
    public const int MaxPatchBytes = 1024 * 1024;

    public static IEndpointRouteBuilder MapA(this IEndpointRouteBuilder routes)
    {
        var a = routes.MapGroup("/a").WithTags("A").ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        a.MapGet("/", GetAll).WithName("GetAllA")
            .WithSummary("Every A with its Bs, ordered by id (buffered eager load)");
        a.MapGet("/first", GetFirst).WithName("GetFirstA")
            .WithSummary("The first A (lowest id) with its Bs")
            .WithDescription("Answers with a strong `ETag` (the row's version); `If-None-Match` with it gives 304.")
            .Produces(StatusCodes.Status304NotModified)
            .ProducesProblem(StatusCodes.Status404NotFound);
        a.MapGet("/stream", Stream).WithName("StreamA")
            .WithSummary("Every A with its Bs, streamed from the database as a JSON array or NDJSON")
            .WithDescription("Rows are sent as PostgreSQL returns them, in constant memory. "
                + "Send `Accept: application/x-ndjson` for one A per line instead of a JSON array.");
        a.MapPatch("/first", PatchFirst).WithName("PatchFirstA")
            .WithSummary("Sets the first A's data and commits")
            .WithDescription("With `If-Match` (an ETag of GET /a/first) the update happens only if the row is still at that "
                + "version, else 412; without it the last write wins, as in the seed. The answer carries the new ETag.")
            .WithMetadata(new RequestSizeLimitAttribute(MaxPatchBytes))
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status412PreconditionFailed)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType);

        return routes;
    }

    static async Task<Ok<List<ADto>>> GetAll(AppDb db, CancellationToken ct) =>
        TypedResults.Ok(await Queries.AllA(db, ct).ToListAsync(ct));

    static async Task<Results<Ok<ADto>, StatusCodeHttpResult, ProblemHttpResult>> GetFirst(
        [FromHeader(Name = "If-None-Match")] string? ifNoneMatch, AppDb db, HttpResponse response, CancellationToken ct)
    {
        if (await Queries.FirstA(db, ct) is not { } first)
            return Problems.NoA();
        ETags.Set(response, first.Version);
        return ETags.NoneMatchHits(ifNoneMatch, first.Version)
            ? TypedResults.StatusCode(StatusCodes.Status304NotModified)
            : TypedResults.Ok(first.A);
    }

    static AStreamResult Stream(AppDb db) => new(Queries.AllA(db));

    static async Task<Results<Ok<ADto>, ValidationProblem, ProblemHttpResult>> PatchFirst(
        [FromBody] PatchA patch, [FromHeader(Name = "If-Match")] string? ifMatch,
        AppDb db, HttpResponse response, CancellationToken ct)
    {
        if (Problems.Validate(patch) is { } invalid)
            return invalid;
        var accepted = ETags.Accepted(ifMatch);

        // One statement changes exactly one column of one row, checking the version in the same WHERE, so
        // no concurrent writer can slip between check and write. The answer is read back in the same
        // transaction: the UPDATE's row lock keeps it equal to what was written.
        await using var tx = await db.Database.BeginTransactionAsync(ct);
        var updated = await db.A
            .Where(a => a.Id == db.A.Min(x => x.Id)
                && (accepted == null || accepted.Contains(EF.Property<uint>(a, AppDb.Version))))
            .ExecuteUpdateAsync(set => set.SetProperty(a => a.Data, patch.Data), ct);
        if (await Queries.FirstA(db, ct) is not { } first)
            return Problems.NoA();
        ETags.Set(response, first.Version);
        if (updated == 0)
            return Problems.VersionChanged();
        await tx.CommitAsync(ct);
        return TypedResults.Ok(first.A);
    }
}
