using System.Diagnostics.Metrics;
using System.Threading.RateLimiting;
using AsyncOrmApi.Data;
using Microsoft.Extensions.Options;
using Npgsql;

namespace AsyncOrmApi.Http;

/// <summary>
/// Caps on the requests that last as long as their client wants: a stream or an ingest holds a pooled PostgreSQL
/// connection throughout (<c>GET /a/stream</c>, <c>POST /a</c>), a subscription holds a socket and a cursor in the
/// change feed's window (<c>GET /a/changes</c>). Each kind is capped per client address (429) and in total (503), both
/// with <c>Retry-After</c>. The total of streams leaves the other half of the pool to the short requests, so that slow
/// clients can never make <c>GET /a/first</c> wait for a connection (100 slow streams took all 100 before; issue 16).
/// Concurrency limiters from System.Threading.RateLimiting, without a queue: a request over a cap is answered at once.
/// </summary>
public sealed class StreamSlots : IDisposable
{

    /// <summary>
    /// What a client over a cap is told to wait. A slot frees when a stream ends, which nobody can foresee; a stream
    /// of the seed-sized table ends within a second, a page-sized resume within a few.
    /// </summary>
    public const int RetryAfterSeconds = 2;

    public Cap Streams { get; }
    public Cap Subscribers { get; }
    /// <summary>
    /// The short writes: a quarter of the pool by default, taken before the body is read, so that writers sending large
    /// bodies hold neither the pool nor the memory (docs/design.md, "Bounds per resource").
    /// </summary>
    public Cap Writes { get; }

    public StreamSlots(IConfiguration config, IOptions<StreamOptions> streams, IOptions<WriteOptions> writes,
        IOptions<Changes.ChangeFeedOptions> feed, IMeterFactory meters)
    {
        // Half the pool by default (Npgsql's Max Pool Size is 100 unless the connection string says otherwise).
        var pool = new NpgsqlConnectionStringBuilder(Database.ConnectionString(config)).MaxPoolSize;
        Streams = new Cap("stream", streams.Value.PerClient, streams.Value.Total ?? Math.Max(1, pool / 2));
        Subscribers = new Cap("subscription", feed.Value.SubscribersPerClient, feed.Value.MaxSubscribers);
        Writes = new Cap("write", writes.Value.PerClient, writes.Value.Total ?? Math.Max(1, pool / 4));

        var meter = meters.Create("AsyncOrmApi");
        meter.CreateObservableUpDownCounter("asyncormapi.streams.open",
            () => new[] { Streams.Measure(), Subscribers.Measure(), Writes.Measure() },
            description: "Streams, ingests, change feed subscriptions and writes open now, by kind.");
        meter.CreateObservableGauge("asyncormapi.streams.limit",
            () => new[] { Streams.MeasureLimit(), Subscribers.MeasureLimit(), Writes.MeasureLimit() },
            description: "The most that may be open at once, by kind (Streams:Total, ChangeFeed:MaxSubscribers, Writes:Total).");
    }

    /// <summary>One kind of long request, with its two caps and the count of those open.</summary>
    public sealed class Cap(string kind, int perClient, int total)
    {
        readonly ConcurrencyLimiter _total = new(new() { PermitLimit = total, QueueLimit = 0 });
        readonly PartitionedRateLimiter<string> _perClient = PartitionedRateLimiter.Create<string, string>(client =>
            RateLimitPartition.GetConcurrencyLimiter(client, _ => new() { PermitLimit = perClient, QueueLimit = 0 }));
        long _open;

        public string Kind => kind;
        public int PerClient => perClient;
        public int Total => total;
        public long Open => Interlocked.Read(ref _open);

        internal Measurement<long> Measure() => new(Open, new KeyValuePair<string, object?>("kind", kind));
        internal Measurement<long> MeasureLimit() => new(total, new KeyValuePair<string, object?>("kind", kind));

        /// <summary>A slot for this request, released when its response has ended; or the problem that refuses it.</summary>
        public IResult? TryTake(HttpContext http)
        {
            var client = http.Connection.RemoteIpAddress?.ToString() ?? "";
            var mine = _perClient.AttemptAcquire(client);
            if (!mine.IsAcquired)
            {
                mine.Dispose();
                return Problems.TooManyStreams(http.Response, kind, perClient);
            }
            var any = _total.AttemptAcquire();
            if (!any.IsAcquired)
            {
                any.Dispose();
                mine.Dispose();
                return Problems.StreamsFull(http.Response, kind, total);
            }
            Interlocked.Increment(ref _open);
            http.Response.RegisterForDispose(new Slot(this, mine, any));
            return null;
        }

        sealed class Slot(Cap cap, RateLimitLease mine, RateLimitLease any) : IDisposable
        {
            public void Dispose()
            {
                any.Dispose();
                mine.Dispose();
                Interlocked.Decrement(ref cap._open);
            }
        }

        internal void Dispose()
        {
            _total.Dispose();
            _perClient.Dispose();
        }
    }

    public void Dispose()
    {
        Streams.Dispose();
        Subscribers.Dispose();
        Writes.Dispose();
    }
}

public static class StreamSlotsExtensions
{
    /// <summary>
    /// Holds one of the <paramref name="cap"/>'s slots for as long as the response lasts, taken before the request's body
    /// is read or a connection is taken (<see cref="UseSlots"/>).
    /// </summary>
    public static TBuilder Capped<TBuilder>(this TBuilder builder, Func<StreamSlots, StreamSlots.Cap> cap) where TBuilder : IEndpointConventionBuilder =>
        builder.WithMetadata(new CappedMetadata(cap))
            .ProducesProblem(StatusCodes.Status429TooManyRequests)
            .ProducesProblem(StatusCodes.Status503ServiceUnavailable);

    sealed record CappedMetadata(Func<StreamSlots, StreamSlots.Cap> Cap);

    /// <summary>Takes the slot of a capped endpoint, or answers its 429 or 503, before the endpoint binds its body.</summary>
    public static WebApplication UseSlots(this WebApplication app)
    {
        var slots = app.Services.GetRequiredService<StreamSlots>();
        app.Use((http, next) =>
            http.GetEndpoint()?.Metadata.GetMetadata<CappedMetadata>() is { } capped && capped.Cap(slots).TryTake(http) is { } refused
                ? refused.ExecuteAsync(http)
                : next(http));
        return app;
    }
}
