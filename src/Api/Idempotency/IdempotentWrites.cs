using System.Buffers;
using System.IO.Pipelines;
using System.Security.Cryptography;
using System.Text;
using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AsyncOrmApi.Idempotency;

/// <summary>
/// Exactly-once writes: a write sent with an <c>Idempotency-Key</c> runs once; its retries (after a 503, a timeout, a cut
/// connection, a failover) get the stored answer with <c>Idempotent-Replayed: true</c> and write nothing. Stripe's
/// semantics, the IETF draft's status codes (422 for a key reused on another request, 409 while the first still runs).
/// Every write's success also answers its <c>Consistency-Token</c> here, after its commit.
/// </summary>
public static class IdempotentWrites
{
    public static WebApplicationBuilder AddIdempotency(this WebApplicationBuilder builder)
    {
        builder.Services.AddOptions<IdempotencyOptions>().BindConfiguration(IdempotencyOptions.Section)
            .ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddHostedService<IdempotencyStore.ExpiredKeys>();
        return builder;
    }

    /// <summary>
    /// Keeps the body of a keyed write that binds it (PATCH's JSON) readable once more, for its fingerprint. A streamed
    /// body (POST /a) is hashed as it streams instead; an unread one (POST /seed) is read by the fingerprint itself.
    /// </summary>
    public static WebApplication UseIdempotency(this WebApplication app)
    {
        app.Use((http, next) =>
        {
            if (http.GetEndpoint()?.Metadata.GetMetadata<IdempotentMetadata>() is { StreamedBody: false }
                && http.Request.Headers.ContainsKey(IdempotencyKey.Header) && http.Request.ContentLength != 0
                && http.Request.HasJsonContentType())
                http.Request.EnableBuffering();
            return next(http);
        });
        return app;
    }

    /// <summary>Marks a write as taking <c>Idempotency-Key</c>; <paramref name="streamedBody"/>: its handler reads the body itself.</summary>
    public static TBuilder Idempotent<TBuilder>(this TBuilder builder, bool streamedBody = false) where TBuilder : IEndpointConventionBuilder =>
        builder.WithMetadata(new IdempotentMetadata(streamedBody), IdempotencyKey.Rule)
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ProducesProblem(StatusCodes.Status422UnprocessableEntity)
            .AddEndpointFilter(async (context, next) =>
            {
                var http = context.HttpContext;
                var options = http.RequestServices.GetRequiredService<IOptions<IdempotencyOptions>>().Value;
                var db = http.RequestServices.GetRequiredService<AppDb>();
                var headers = http.Request.Headers[IdempotencyKey.Header];
                if (headers.Count == 0)
                {
                    // The write and its token on one connection, held from before the write: after its commit a second
                    // pooled connection may not come in time, and a write that committed is answered as done
                    // (docs/design.md, "Bounds per resource").
                    await db.Database.OpenConnectionAsync(http.RequestAborted);
                    try
                    {
                        var result = await next(context);
                        if (Succeeded(result))
                            await TrySetTokenAsync(db, http);
                        return result;
                    }
                    finally
                    {
                        await db.Database.CloseConnectionAsync();
                    }
                }
                if (!IdempotencyKey.TryParse(headers, out var key))
                    return Problems.Invalid(IdempotencyKey.Header,
                        $"{IdempotencyKey.Rule.Rule} It was '{Printable(headers.ToString())}'.");
                return await RunOnceAsync(context, next, db, key, options.Retention, streamedBody);
            });

    static async ValueTask<object?> RunOnceAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next, AppDb db,
        IdempotencyKey key, TimeSpan retention, bool streamedBody)
    {
        var http = context.HttpContext;
        var ct = http.RequestAborted;
        using var fingerprint = Fingerprint(http.Request);
        StoredAnswer? stored;
        byte[]? storedFingerprint;
        await using (var tx = await db.Database.BeginTransactionAsync(ct))
        {
            // A write that fails rolls back the whole transaction, key and all: it needs no savepoint of its own, which
            // SaveChanges would otherwise set and release (two round trips) inside a transaction it did not begin. The
            // pooled context resets the flag when it is returned.
            db.Database.AutoSavepointsEnabled = false;
            var caller = Caller(http);
            switch (await IdempotencyStore.ClaimAsync(db, caller, key, retention, ct))
            {
                case IdempotencyStore.Claim.Running:
                    return Problems.KeyInUse(http.Response);
                case IdempotencyStore.Claim.Answered answered:
                    (stored, storedFingerprint) = (answered.Answer, answered.Fingerprint);
                    break;
                default:
                    // New: the write runs in this transaction (AppDb.BeginWriteAsync joins it), its answer is stored in it.
                    if (streamedBody)
                        HashAsItStreams(http, fingerprint);
                    else
                        await HashBufferedAsync(http.Request, fingerprint, ct);
                    var result = await next(context);
                    if (!Succeeded(result))
                        return result;
                    var answer = await StoredAnswer.CaptureAsync(http, (IResult)result!);
                    // Commits tx, in the round trip that stores the answer.
                    http.Response.Headers[Consistency.Header] =
                        await IdempotencyStore.StoreAndCommitAsync(db, caller, key, fingerprint.GetHashAndReset(), answer, ct);
                    return answer;
            }
        }
        // A stored answer: the transaction (and the connection) is given back before the body is read, which may take long.
        if (streamedBody)
            await DrainAsync(http.Request.BodyReader, fingerprint, ct);
        else
            await HashBufferedAsync(http.Request, fingerprint, ct);
        if (!CryptographicOperations.FixedTimeEquals(fingerprint.GetHashAndReset(), storedFingerprint))
            return Problems.KeyReused();
        await Consistency.QueryAndSetAsync(db, http.Response, ct);
        return stored;
    }

    /// <summary>The token of a write that has committed, whatever happens to the request meanwhile; none if it cannot be read.</summary>
    static async Task TrySetTokenAsync(AppDb db, HttpContext http)
    {
        try
        {
            await Consistency.QueryAndSetAsync(db, http.Response, CancellationToken.None);
        }
        catch (Exception e) when (e is Npgsql.NpgsqlException or InvalidOperationException or TimeoutException)
        {
            http.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(IdempotentWrites))
                .LogWarning(e, "{Method} {Path} committed; its Consistency-Token could not be read", http.Request.Method, http.Request.Path);
        }
    }

    /// <summary>
    /// Whose key it is: the admin key's holder, or else the client's address (behind a named proxy, the forwarded one).
    /// Keys of one caller never meet another's, so no client can take a key another will send, or make it a 422.
    /// </summary>
    static string Caller(HttpContext http) => AdminKey.Holds(http) ? "admin" : $"client {http.Connection.RemoteIpAddress}";

    static bool Succeeded(object? result) => (result is INestedHttpResult nested ? nested.Result : result)
        is IStatusCodeHttpResult { StatusCode: >= 200 and < 300 };

    /// <summary>
    /// "The same request": method, path and query, the headers that change its meaning, and the body (hashed later). A
    /// NUL, which no header or path holds, separates the parts.
    /// </summary>
    static IncrementalHash Fingerprint(HttpRequest request)
    {
        var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var part in (string?[])[request.Method, request.Path.Value, request.QueryString.Value,
                     request.Headers.ContentType, request.Headers.IfMatch, request.Headers["Prefer"]])
        {
            hash.AppendData(Encoding.UTF8.GetBytes(part ?? ""));
            hash.AppendData([0]);
        }
        return hash;
    }

    static async Task HashBufferedAsync(HttpRequest request, IncrementalHash hash, CancellationToken ct)
    {
        if (request.Body.CanSeek)
            request.Body.Position = 0;
        var buffer = ArrayPool<byte>.Shared.Rent(16 * 1024);
        try
        {
            int read;
            while ((read = await request.Body.ReadAsync(buffer, ct)) > 0)
                hash.AppendData(buffer, 0, read);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    static void HashAsItStreams(HttpContext http, IncrementalHash hash) =>
        http.Features.Set<IRequestBodyPipeFeature>(new HashedBody(new HashingReader(http.Request.BodyReader, hash)));

    static async Task DrainAsync(PipeReader body, IncrementalHash hash, CancellationToken ct)
    {
        while (true)
        {
            var read = await body.ReadAsync(ct);
            foreach (var segment in read.Buffer)
                hash.AppendData(segment.Span);
            body.AdvanceTo(read.Buffer.End);
            if (read.IsCompleted)
                return;
        }
    }

    static string Printable(string text) =>
        new(text.Take(40).Select(c => c is < ' ' or > '~' ? '?' : c).Concat(text.Length > 40 ? "..." : "").ToArray());

    sealed class HashedBody(PipeReader reader) : IRequestBodyPipeFeature
    {
        public PipeReader Reader => reader;
    }

    /// <summary>Hashes what its reader consumes, as it consumes it: the body is hashed in the one pass that copies it.</summary>
    sealed class HashingReader(PipeReader inner, IncrementalHash hash) : PipeReader
    {
        ReadOnlySequence<byte> _last;

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken ct = default)
        {
            var read = await inner.ReadAsync(ct);
            _last = read.Buffer;
            return read;
        }

        public override bool TryRead(out ReadResult result)
        {
            if (!inner.TryRead(out result))
                return false;
            _last = result.Buffer;
            return true;
        }

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            foreach (var segment in _last.Slice(_last.Start, consumed))
                hash.AppendData(segment.Span);
            _last = default;
            inner.AdvanceTo(consumed, examined);
        }

        public override void CancelPendingRead() => inner.CancelPendingRead();
        public override void Complete(Exception? exception = null) => inner.Complete(exception);
    }
}

/// <summary>Marks the writes that take <c>Idempotency-Key</c>, for the middleware and the OpenAPI document.</summary>
public sealed record IdempotentMetadata(bool StreamedBody);
