using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AsyncOrmApi.Endpoints;

/// <summary>Probes for orchestrators: liveness never touches the database, readiness does.</summary>
public static class HealthEndpoints
{
    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder routes)
    {
        var health = routes.MapGroup("/health").WithTags("Health");

        health.MapGet("/live", Live).WithName("Live")
            .WithSummary("200 while the process runs (never touches the database)");
        health.MapGet("/ready", Ready).WithName("Ready")
            .WithSummary("200 when PostgreSQL answers, else 503")
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        return routes;
    }

    static Ok<HealthStatus> Live() => TypedResults.Ok(new HealthStatus("Healthy"));

    static async Task<Results<Ok<HealthStatus>, ProblemHttpResult>> Ready(AppDb db, HttpResponse response, CancellationToken ct) =>
        await db.Database.CanConnectAsync(ct)
            ? TypedResults.Ok(new HealthStatus("Healthy"))
            : Problems.DatabaseDown(response);
}
