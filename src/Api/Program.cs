using AsyncOrmApi;
using AsyncOrmApi.Changes;
using AsyncOrmApi.Data;
using AsyncOrmApi.Endpoints;
using AsyncOrmApi.Http;
using AsyncOrmApi.Idempotency;

// A setting that is missing or invalid stops the process with one line that names it, and exit code 1: not a stack trace
// and SIGABRT (134).
try
{
    var builder = WebApplication.CreateBuilder(args);

    // Database: PostgreSQL through EF Core, one DbContext per request; health probes, readiness on it.
    builder.AddDatabase();
    builder.Services.AddHealth();

    // HTTP: one JSON setup, one error shape.
    builder.Services.ConfigureHttpJsonOptions(o => WireJson.Configure(o.SerializerOptions));
    builder.Services.AddProblems();

    // OpenAPI document and Swagger UI, in every environment.
    builder.Services.AddApiDocs();

    // Telemetry: OpenTelemetry traces and metrics, GET /metrics, JSON logs outside Development.
    builder.AddTelemetry();

    // Behind a reverse proxy: the client's address from X-Forwarded-For, when a proxy named in the settings sends it.
    builder.AddProxies();

    // Limits: per-client rate limits and request timeouts.
    builder.AddLimits();

    // The change feed: GET /a/changes, from PostgreSQL's logical replication.
    builder.AddChangeFeed();

    // Exactly-once writes: Idempotency-Key, its answers stored with the writes in PostgreSQL.
    builder.AddIdempotency();

    // Start-up: a page and the streams served in the process before Kestrel listens, so no client waits for the JIT.
    builder.AddWarmStart();

    var app = builder.Build();
    app.ValidateSettings();

    app.UseProxies();
    app.UseTelemetry();
    app.UseProblems();
    app.UseLimits();
    app.UseIdempotency();
    app.UseChangePositions();
    app.UseApiDocs();

    await app.PrepareDatabaseAsync();

    app.MapAdmin();
    app.MapA();
    app.MapChanges();
    app.MapHealth();

    await app.RunAsync();
}
catch (Exception e) when (StartFailure.EndsTheProcess(e))
{
    Console.Error.WriteLine($"AsyncOrmApi did not start: {StartFailure.Describe(e)}");
    return 1;
}
return 0;

public partial class Program;
