using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using AsyncOrmApi.Idempotency;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;
using Npgsql;

namespace AsyncOrmApi.Endpoints;

/// <summary>The seed's set-up steps: drop_all/create_all and add_all.</summary>
public static class AdminEndpoints
{
    public const int MaxCopies = 1_000_000;

    static readonly ParameterRule Count = new("count",
        $"count must be an integer from 1 to {MaxCopies:N0}: the copies of the graph to add, in one transaction (default 1).", 1, MaxCopies);

    public static IEndpointRouteBuilder MapAdmin(this IEndpointRouteBuilder routes)
    {
        // How long POST /reset tries to get the tables before it answers 503.
        var lockWait = TimeSpan.FromSeconds(routes.ServiceProvider.GetRequiredService<IOptions<ResetOptions>>().Value.LockTimeoutSeconds);
        var keyAside = routes.ServiceProvider.GetRequiredService<IOptions<SeedOptions>>().Value.MaxCopiesWithKeyAside;
        var admin = routes.MapGroup("/").WithTags("Admin").RequireAdminKey("POST /reset, POST /seed")
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable)
            .WriteLimited()
            .Capped(slots => slots.Writes)
            .ProducesTimeout()
            .Idempotent();

        admin.MapPost("/reset", (AppDb db, HttpResponse response, CancellationToken ct) => Reset(db, lockWait, response, ct)).WithName("Reset")
            .WithSummary("Drops and creates the tables a and b (all rows are lost)")
            .WithDescription("The seed's `drop_all` and `create_all`, in one transaction: only the tables a and b, "
                + "which come back empty with their sequences restarted. While other transactions use the tables (an "
                + $"ingest, a long read) it waits up to Reset:LockTimeoutSeconds ({ResetOptions.DefaultLockTimeoutSeconds:0} s) for them, then "
                + "answers 503 with Retry-After; reads never queue behind it for longer than a moment.");
        admin.MapPost("/seed", (AppDb db, CancellationToken ct, int count = 1) => Seed(db, keyAside, count, ct)).WithName("Seed")
            .WithSummary("Adds the seed's graph: A a1 with 2 B, a2 with 1, a3 with 2")
            .WithDescription($"`count` adds that many copies of the graph (1 to {MaxCopies:N0}) in one transaction. Up to "
                + $"Seed:MaxCopiesWithKeyAside ({SeedOptions.DefaultMaxCopiesWithKeyAside:N0}) copies into empty tables load as PostgreSQL advises for bulk loads: b's "
                + "foreign key is dropped and added back, checked once, in the same transaction, and reads of a and b wait "
                + "for the seed (a few seconds at most) instead of seeing the empty tables.")
            .WithMetadata(Count)
            .ProducesValidationProblem()
            // A million copies are eight million rows: minutes, like its command timeout.
            .WithRequestTimeout(TimeSpan.FromMinutes(10));

        return routes;
    }

    static async Task<Results<NoContent, ProblemHttpResult>> Reset(AppDb db, TimeSpan lockWait, HttpResponse response, CancellationToken ct)
    {
        try
        {
            await db.ResetTablesAsync(lockWait, ct);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.LockNotAvailable)
        {
            return Problems.TablesBusy(response, lockWait);
        }
        return TypedResults.NoContent();
    }

    static async Task<Results<Created<RowCounts>, ValidationProblem>> Seed(AppDb db, int keyAside, int count, CancellationToken ct)
    {
        if (Count.Check(count) is { } invalid)
            return invalid;

        var (a, b) = await db.AddCopiesAsync(count, keyAside, ct);
        return TypedResults.Created("/a", new RowCounts(a, b));
    }
}
