using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Probe = Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus;

namespace AsyncOrmApi.Endpoints;

/// <summary>
/// Probes for orchestrators, with ASP.NET Core's health checks (as eShop's service defaults): liveness runs no check and
/// never touches the database; readiness runs EF Core's check of <see cref="AppDb"/> (can it connect?).
/// </summary>
public static class HealthEndpoints
{
    const string Ready = "ready";

    public static IServiceCollection AddHealth(this IServiceCollection services)
    {
        services.AddHealthChecks().AddDbContextCheck<AppDb>("postgres", tags: [Ready]);
        return services;
    }

    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder routes)
    {
        // Probes are for orchestrators, not API clients: health check endpoints stay out of the OpenAPI document, and
        // docs/errors-and-security.md describes them.
        routes.MapHealthChecks("/health/live", new HealthCheckOptions { Predicate = _ => false, ResponseWriter = AnswerAsync })
            .WithName("Live");
        routes.MapHealthChecks("/health/ready", new HealthCheckOptions { Predicate = c => c.Tags.Contains(Ready), ResponseWriter = AnswerAsync })
            .WithName("Ready");
        return routes;
    }

    /// <summary>The answers the probes always gave: 200 <c>{"status":"Healthy"}</c>, or 503 problem+json with Retry-After.</summary>
    static Task AnswerAsync(HttpContext http, HealthReport report) =>
        report.Status == Probe.Healthy
            ? TypedResults.Ok(new AsyncOrmApi.HealthStatus("Healthy")).ExecuteAsync(http)
            : Problems.DatabaseDown(http.Response).ExecuteAsync(http);
}
