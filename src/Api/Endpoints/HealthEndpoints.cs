using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AsyncOrmApi.Endpoints;

/// <summary>Probes for orchestrators: liveness never touches the database, readiness does.</summary>
public static class HealthEndpoints
{
    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder routes)
    {
        // Probes are for orchestrators, not API clients: left out of the OpenAPI document, described in docs/errors-and-security.md.
        var health = routes.MapGroup("/health").ExcludeFromDescription();

        health.MapGet("/live", Live).WithName("Live");
        health.MapGet("/ready", Ready).WithName("Ready");

        return routes;
    }

    static Ok<HealthStatus> Live() => TypedResults.Ok(new HealthStatus("Healthy"));

    static async Task<Results<Ok<HealthStatus>, ProblemHttpResult>> Ready(AppDb db, HttpResponse response, CancellationToken ct) =>
        await db.Database.CanConnectAsync(ct)
            ? TypedResults.Ok(new HealthStatus("Healthy"))
            : Problems.DatabaseDown(response);
}
