using System.Text.RegularExpressions;
using System.Text;
using System.Diagnostics;
using Npgsql;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace AsyncOrmApi.Http;

/// <summary>
/// What an operator sees, the .NET Aspire service-defaults way: OpenTelemetry traces (a server span per request,
/// a child span per PostgreSQL command with its SQL text and never its parameter values) and metrics (ASP.NET
/// Core's, Npgsql's, the runtime's), exported over OTLP when the standard OTEL_* variables say where, and scraped
/// by Prometheus at GET /metrics; logs as JSON lines outside Development, one line per request.
/// </summary>
public static partial class Telemetry
{
    public const string Setting = "Telemetry:Enabled";
    public const string DefaultServiceName = "asyncormapi";
    public const string MetricsPath = "/metrics";

    public static WebApplicationBuilder AddTelemetry(this WebApplicationBuilder builder)
    {
        // Outside Development a log line is a JSON object on stdout, carrying its request's trace id (the host
        // tracks TraceId and SpanId in the logging scope) so that a line leads to its trace.
        if (!builder.Environment.IsDevelopment())
            builder.Logging.ClearProviders().AddJsonConsole(o =>
            {
                o.IncludeScopes = true;
                o.UseUtcTimestamp = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
            });
        if (!builder.Configuration.GetValue(Setting, true))
            return builder;

        var serviceName = builder.Configuration["OTEL_SERVICE_NAME"] is { Length: > 0 } name ? name : DefaultServiceName;
        // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT, _PROTOCOL and _HEADERS itself; without an endpoint
        // nothing is sent anywhere (it would otherwise try localhost:4317).
        var exporting = builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"] is { Length: > 0 };
        var otel = builder.Services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService(serviceName))
            .WithMetrics(metrics => metrics
                // Hosting's request durations and Kestrel's connections, not every ASP.NET Core meter: routing,
                // rate limiting and diagnostics would record on every request too, for figures nobody asked for.
                .AddMeter("Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel")
                // Npgsql's command durations and pool usage; not its counters of bytes and of executing commands,
                // which move on every read, write and command.
                .AddNpgsqlInstrumentation()
                .AddView("db.client.operation.npgsql.bytes_written", MetricStreamConfiguration.Drop)
                .AddView("db.client.operation.npgsql.bytes_read", MetricStreamConfiguration.Drop)
                .AddView("db.client.operation.npgsql.executing", MetricStreamConfiguration.Drop)
                .AddMeter("System.Runtime")
                // The API's own bounds: streams and subscriptions open, the change feed's window (StreamSlots, ChangeFeed).
                .AddMeter("AsyncOrmApi")
                .AddPrometheusExporter());
        if (exporting)
        {
            builder.Logging.AddOpenTelemetry(o =>
            {
                o.IncludeFormattedMessage = true;
                o.IncludeScopes = true;
            });
            // Traced only when the spans have somewhere to go. Instrumented for nobody, even with every span dropped by
            // an AlwaysOff sampler, GET /a served 0.92-0.95 of its rate with telemetry off; without, 0.97-0.99
            // (wrk -t1 -c32, three builds alternating; issue 20). Requests keep their trace ids in the logs either way.
            otel.WithTracing(tracing => tracing
                .AddAspNetCoreInstrumentation(o => o.Filter = http => !IsOperational(http.Request.Path))
                .AddNpgsql());
            otel.UseOtlpExporter();
        }
        return builder;
    }

    /// <summary>The request log line, and the Prometheus scrape endpoint (open, unlimited, not in the OpenAPI document).</summary>
    public static WebApplication UseTelemetry(this WebApplication app)
    {
        app.UseMiddleware<RequestLog>();
        if (app.Configuration.GetValue(Setting, true))
        {
            app.UseWhen(http => http.Request.Path.StartsWithSegments(MetricsPath), branch => branch.UseMiddleware<UnnamedPools>());
            app.MapPrometheusScrapingEndpoint(MetricsPath).ExcludeFromDescription().DisableRequestTimeout();
        }
        return app;
    }

    /// <summary>
    /// Names, in the scrape, the one pool the API cannot name: Npgsql builds the change feed's replication connection
    /// itself (LogicalReplicationConnection takes a connection string, not a data source) and labels its metrics with
    /// that string, password removed but host, port, database and user in it (issue 19). Every data source the API builds
    /// has a name of its own (asyncormapi, asyncormapi-reads, asyncormapi-changefeed, asyncormapi-changefeed-hosts).
    /// </summary>
    sealed partial class UnnamedPools(RequestDelegate next)
    {
        public async Task InvokeAsync(HttpContext http)
        {
            var body = http.Response.Body;
            using var scrape = new MemoryStream();
            http.Response.Body = scrape;
            try
            {
                await next(http);
            }
            finally
            {
                http.Response.Body = body;
            }
            var text = Encoding.UTF8.GetString(scrape.GetBuffer(), 0, (int)scrape.Length);
            var named = Encoding.UTF8.GetBytes(ConnectionStringLabel().Replace(text, m =>
                $"{m.Groups["label"].Value}=\"{(m.Groups["value"].Value.Contains("Replication Mode=") ? "asyncormapi-changefeed-replication" : "npgsql-unnamed")}\""));
            http.Response.ContentLength = named.Length;
            await body.WriteAsync(named);
        }

        [GeneratedRegex("(?<label>pool_name)=\"(?<value>[^\"]*=[^\"]*)\"")]
        private static partial Regex ConnectionStringLabel();
    }

    /// <summary>Probes and scrapes: polled all day long, their traces would bury the requests that matter.</summary>
    static bool IsOperational(PathString path) => path.StartsWithSegments("/health") || path.StartsWithSegments(MetricsPath);

    /// <summary>
    /// One line per request: method, route (the endpoint's pattern, never the raw path or query), status and
    /// duration. Never a header or a body, so neither the admin key nor an Authorization value can reach the log.
    /// </summary>
    sealed partial class RequestLog(RequestDelegate next, ILogger<RequestLog> log)
    {
        public async Task InvokeAsync(HttpContext http)
        {
            if (!log.IsEnabled(LogLevel.Information) || WarmStart.IsWarmUp(http))
            {
                await next(http);
                return;
            }
            var start = Stopwatch.GetTimestamp();
            try
            {
                await next(http);
            }
            finally
            {
                var route = (Endpoints.Of(http) as RouteEndpoint)?.RoutePattern.RawText ?? "(no route)";
                // The client's address as the limits see it: behind a named proxy, the one X-Forwarded-For gave.
                Answered(log, http.Request.Method, route, http.Response.StatusCode, Stopwatch.GetElapsedTime(start).TotalMilliseconds,
                    http.Connection.RemoteIpAddress?.ToString() ?? "");
            }
        }

        [LoggerMessage(Level = LogLevel.Information, Message = "{Method} {Route} answered {Status} in {DurationMs:0.0} ms to {Client}")]
        static partial void Answered(ILogger log, string method, string route, int status, double durationMs, string client);
    }
}
