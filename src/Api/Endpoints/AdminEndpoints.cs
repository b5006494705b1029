using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AsyncOrmApi.Endpoints;

/// <summary>The seed's set-up steps: drop_all/create_all and add_all.</summary>
public static class AdminEndpoints
{
    public const int MaxCopies = 1_000_000;

    static readonly ParameterRule Count = new("count",
        $"count must be an integer from 1 to {MaxCopies:N0}: the copies of the graph to add, in one transaction (default 1).");

    public static IEndpointRouteBuilder MapAdmin(this IEndpointRouteBuilder routes)
    {
        var admin = routes.MapGroup("/").WithTags("Admin").RequireAdminKey("POST /reset, POST /seed")
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable)
            .WriteLimited()
            .Timed();

        admin.MapPost("/reset", Reset).WithName("Reset")
            .WithSummary("Drops and creates the tables a and b (all rows are lost)")
            .WithDescription("The seed's `drop_all` and `create_all`, in one transaction: only the tables a and b, "
                + "which come back empty with their sequences restarted.");
        admin.MapPost("/seed", Seed).WithName("Seed")
            .WithSummary("Adds the seed's graph: A a1 with 2 B, a2 with 1, a3 with 2")
            .WithDescription($"`count` adds that many copies of the graph (1 to {MaxCopies:N0}) in one transaction.")
            .WithMetadata(Count)
            .ProducesValidationProblem()
            // A million copies are eight million rows: minutes, like its command timeout.
            .WithRequestTimeout(TimeSpan.FromMinutes(10));

        return routes;
    }

    static async Task<NoContent> Reset(AppDb db, HttpResponse response, CancellationToken ct)
    {
        await db.ResetTablesAsync(ct);
        await Consistency.SetAsync(db, response, ct);
        return TypedResults.NoContent();
    }

    static async Task<Results<Created<RowCounts>, ValidationProblem>> Seed(AppDb db, HttpResponse response, CancellationToken ct, int count = 1)
    {
        if (count is < 1 or > MaxCopies)
            return Problems.Invalid(Count.Name, $"{Count.Rule} It was {count}.");

        var (a, b) = await db.AddCopiesAsync(count, ct);
        await Consistency.SetAsync(db, response, ct);
        return TypedResults.Created("/a", new RowCounts(a, b));
    }
}
