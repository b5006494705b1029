using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Http.Timeouts;
using Microsoft.AspNetCore.RateLimiting;
using Microsoft.Extensions.Options;

namespace AsyncOrmApi.Http;

/// <summary>
/// Protection with what ASP.NET Core ships, each bound a typed setting (LimitOptions.cs): per-client rate limits (a write budget, and a read budget for the
/// expensive reads) answered with 429 and Retry-After, and a request timeout answered with 504 that cancels the
/// request's PostgreSQL query. Limits are counted per API process: several processes behind a load balancer
/// each allow the full budget.
/// </summary>
public static class Limits
{
    const string Writes = "writes";
    const string Reads = "reads";

    public static WebApplicationBuilder AddLimits(this WebApplicationBuilder builder)
    {
        var services = builder.Services;
        Typed<RateLimitOptions>(services, RateLimitOptions.Section);
        Typed<TimeoutOptions>(services, TimeoutOptions.Section);
        Typed<ShutdownOptions>(services, ShutdownOptions.Section);
        Typed<StreamOptions>(services, StreamOptions.Section);
        Typed<WriteOptions>(services, WriteOptions.Section);
        Typed<ResetOptions>(services, ResetOptions.Section);
        Typed<SeedOptions>(services, SeedOptions.Section);
        Typed<IngestOptions>(services, IngestOptions.Section);

        services.AddRateLimiter(_ => { });
        services.AddOptions<RateLimiterOptions>().Configure<IOptions<RateLimitOptions>, IHostEnvironment>((o, limits, env) =>
        {
            // Development is for trying things: no budget unless one is set. Elsewhere writes have one by default;
            // reads only once it is set. 0 turns a budget off.
            var writes = limits.Value.WritesPerMinute ?? (env.IsDevelopment() ? 0 : RateLimitOptions.DefaultWritesPerMinute);
            var reads = limits.Value.ReadsPerMinute ?? 0;
            o.AddPolicy(Writes, http => PerClient(http, writes));
            o.AddPolicy(Reads, http => PerClient(http, reads));
            o.RejectionStatusCode = StatusCodes.Status429TooManyRequests;
            // The lease's own RetryAfter is always the whole window (60 s); the wait is until this window's end.
            o.OnRejected = (context, _) => new ValueTask(
                Problems.TooManyRequests(context.HttpContext.Response, UntilNextWindow()).ExecuteAsync(context.HttpContext));
        });

        // Caps on the requests that hold a connection or a socket: streams, ingests, change feed subscriptions, writes.
        services.AddSingleton<StreamSlots>();
        services.AddSingleton<WriteBytes>();

        // On SIGTERM: requests in flight get this long to finish (a stream its rest, an ingest its body); then their
        // connections are cut, and an ingest cut so is rolled back. Change feed subscriptions end at once.
        services.AddOptions<HostOptions>().Configure<IOptions<ShutdownOptions>>((o, shutdown) =>
            o.ShutdownTimeout = TimeSpan.FromSeconds(shutdown.Value.TimeoutSeconds));

        services.AddRequestTimeouts(_ => { });
        services.AddOptions<RequestTimeoutOptions>().Configure<IOptions<TimeoutOptions>>((o, timeouts) =>
        {
            var seconds = timeouts.Value.RequestSeconds;
            o.DefaultPolicy = new RequestTimeoutPolicy
            {
                Timeout = TimeSpan.FromSeconds(seconds),
                TimeoutStatusCode = StatusCodes.Status504GatewayTimeout,
                WriteTimeoutResponse = http => Problems.TimedOut(seconds).ExecuteAsync(http),
            };
        });
        return builder;
    }

    /// <summary>A section bound to its options class, checked at start (eShop's way).</summary>
    public static void Typed<T>(IServiceCollection services, string section) where T : class =>
        services.AddOptions<T>().BindConfiguration(section).ValidateDataAnnotations().ValidateOnStart();

    public static WebApplication UseLimits(this WebApplication app)
    {
        app.UseRateLimiter();
        app.UseWriteBytes();
        app.UseSlots();
        // The timeout cancels HttpContext.RequestAborted, which every query is given: Npgsql then cancels the
        // query on the server, so nothing keeps running for an answer nobody will get.
        app.UseRequestTimeouts();
        return app;
    }

    /// <summary>Counts against the write budgets (requests, and bytes for clients without the admin key): PATCH, reset, seed, ingest.</summary>
    public static TBuilder WriteLimited<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder =>
        builder.RequireRateLimiting(Writes).WithMetadata(new WriteBytes.Metadata()).ProducesProblem(StatusCodes.Status429TooManyRequests);

    /// <summary>
    /// The bytes budget: each write of a client without the admin key is charged its body's length (its Content-Length,
    /// or the whole minute's budget when it sends none) before it runs, per client and clock minute, as the write budget.
    /// </summary>
    sealed class WriteBytes : IDisposable
    {
        public sealed class Metadata;

        readonly int _perMinute;
        readonly PartitionedRateLimiter<HttpContext> _budget;

        public WriteBytes(IOptions<RateLimitOptions> limits, IHostEnvironment env)
        {
            _perMinute = limits.Value.WriteBytesPerMinute ?? (env.IsDevelopment() ? 0 : RateLimitOptions.DefaultWriteBytesPerMinute);
            var permits = Math.Max(1, _perMinute);
            // Per client and clock minute, as the write budget's partitions (PerClient).
            _budget = PartitionedRateLimiter.Create<HttpContext, string>(http => RateLimitPartition.GetFixedWindowLimiter(
                $"{http.Connection.RemoteIpAddress}/{TimeProvider.System.GetUtcNow().Ticks / Window.Ticks}",
                _ => new() { PermitLimit = permits, Window = 2 * Window, QueueLimit = 0 }));
        }

        /// <summary>The problem that refuses the request, or null when its bytes fit this minute's budget (or none applies).</summary>
        public IResult? TryCharge(HttpContext http)
        {
            if (_perMinute <= 0 || AdminKey.Holds(http))
                return null;
            // A request without a body costs nothing; a body of unknown length is charged the whole minute's budget.
            if (http.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpRequestBodyDetectionFeature>() is { CanHaveBody: false })
                return null;
            var bytes = http.Request.ContentLength ?? _perMinute;
            if (bytes == 0)
                return null;
            if (bytes <= _perMinute)
            {
                using var lease = _budget.AttemptAcquire(http, (int)bytes);
                if (lease.IsAcquired)
                    return null;
            }
            return Problems.TooManyBytes(http.Response, UntilNextWindow(), _perMinute);
        }

        public void Dispose() => _budget.Dispose();
    }

    static WebApplication UseWriteBytes(this WebApplication app)
    {
        var bytes = app.Services.GetRequiredService<WriteBytes>();
        app.Use((http, next) =>
            http.GetEndpoint()?.Metadata.GetMetadata<WriteBytes.Metadata>() is not null && bytes.TryCharge(http) is { } refused
                ? refused.ExecuteAsync(http)
                : next(http));
        return app;
    }

    /// <summary>Counts against the read budget: the reads of A with their Bs (GET /a, GET /a/first, the stream, the feed).</summary>
    public static TBuilder ReadLimited<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder =>
        builder.RequireRateLimiting(Reads).ProducesProblem(StatusCodes.Status429TooManyRequests);

    /// <summary>Documents the 504 of the request timeout, which bounds every endpoint by default (streams opt out); it sets no timeout.</summary>
    public static TBuilder ProducesTimeout<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder =>
        builder.ProducesProblem(StatusCodes.Status504GatewayTimeout);

    static readonly TimeSpan Window = TimeSpan.FromMinutes(1);

    /// <summary>
    /// A budget per client and per clock minute: the minute is part of the partition's key, so a new minute is a fresh
    /// limiter and the time until the budget comes back is known exactly (the framework's fixed window starts when a
    /// client first arrives and drifts by its 100 ms replenishment tick). The previous minute's limiter is dropped
    /// once idle.
    /// </summary>
    static RateLimitPartition<string> PerClient(HttpContext http, int perMinute) =>
        perMinute <= 0
            ? RateLimitPartition.GetNoLimiter("")
            : RateLimitPartition.GetFixedWindowLimiter(
                $"{http.Connection.RemoteIpAddress}/{TimeProvider.System.GetUtcNow().Ticks / Window.Ticks}", _ => new()
                {
                    PermitLimit = perMinute,
                    // Never replenished within its minute: the next minute has a limiter of its own.
                    Window = 2 * Window,
                    QueueLimit = 0,
                });

    static TimeSpan UntilNextWindow() => TimeSpan.FromTicks(Window.Ticks - TimeProvider.System.GetUtcNow().Ticks % Window.Ticks);
}
