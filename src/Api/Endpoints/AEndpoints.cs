using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using AsyncOrmApi.Idempotency;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using Npgsql;

namespace AsyncOrmApi.Endpoints;

/// <summary>
/// The seed's reads (selectinload, session.stream) and its one write (the first A renamed), in pages and
/// resumable streams at any table size; and bulk ingest, copy and sync of A. The change feed, GET /a/changes, has a
/// room of its own (ChangeFeed/ChangeFeedEndpoints.cs).
/// </summary>
public static class AEndpoints
{
    /// <summary>A PATCH body holds one string; far more than that is a mistake or an attack, not data.</summary>
    public const int MaxPatchBytes = 1024 * 1024;


    public static IEndpointRouteBuilder MapA(this IEndpointRouteBuilder routes)
    {
        // One group with no prefix, so that each route reads as it is written: a group "/a" made GET /a "/a/" in the metrics.
        var a = routes.MapGroup("").WithTags("A").ProducesProblem(StatusCodes.Status503ServiceUnavailable);

        a.MapGet("/a", GetPage).WithName("GetAllA")
            .WithSummary("A page of A with their Bs, ordered by id (buffered eager load)")
            .WithDescription($"Keyset pages: at most `limit` A (default {Paging.DefaultLimit:N0}, at most {Paging.MaxLimit:N0}) with id "
                + $"greater than `after`, each with all its Bs, and at most {Queries.MaxRows:N0} rows in all (a row per B, one for an A "
                + "without Bs): a page whose rows run out ends with the last whole A. When more follow, the `Link` header holds the "
                + "next page's URL (`rel=\"next\"`): follow it rather than building one. The last page has no `next`. An A with more "
                + $"than {Queries.MaxRows:N0} Bs comes with its first {Queries.MaxRows:N0} and `\"bsHasMore\": true`; "
                + "`GET /a/stream?after={id - 1}` has it whole.")
            .WithMetadata(Paging.Limit, Paging.After, Consistency.Token, new ReadSnapshot.Metadata())
            .ProducesValidationProblem()
            .ReadLimited()
            .ProducesTimeout();
        a.MapGet("/a/first", GetFirst).WithName("GetFirstA")
            .WithSummary("The first A (lowest id) with its Bs")
            .WithDescription("Answers with a strong `ETag` (the row's version); `If-None-Match` with it gives 304. At most "
                + $"{Queries.MaxRows:N0} of its Bs, with `\"bsHasMore\": true` when it has more (`GET /a/stream` has them all).")
            .WithMetadata(Consistency.Token, ETags.IfNoneMatch, new ReadSnapshot.Metadata())
            .Produces(StatusCodes.Status304NotModified)
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ReadLimited()
            .ProducesTimeout();
        a.MapGet("/a/stream", Stream).WithName("StreamA")
            .WithSummary("Every A with its Bs, streamed from the database as a JSON array or NDJSON")
            .WithDescription("Rows are sent as PostgreSQL returns them, in constant memory. "
                + "Send `Accept: application/x-ndjson` for one A per line instead of a JSON array. "
                + "A client whose stream was cut resumes with `after` = the id of the last whole A it received.")
            .WithMetadata(Paging.After, Consistency.Token, new ReadSnapshot.Metadata())
            .ProducesValidationProblem()
            .ReadLimited()
            .Capped(slots => slots.Streams)
            // A stream runs as long as the table is long; it stops when its client leaves.
            .DisableRequestTimeout();
        a.MapPatch("/a/first", PatchFirst).WithName("PatchFirstA")
            .WithSummary("Sets the first A's data and commits")
            .WithDescription("With `If-Match` (an ETag of GET /a/first) the update happens only if the row is still at that "
                + "version, else 412; without it the last write wins, as in the seed. The answer carries the new ETag.")
            .WithMetadata(new RequestSizeLimitAttribute(MaxPatchBytes), ETags.IfMatch)
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status404NotFound)
            .ProducesProblem(StatusCodes.Status412PreconditionFailed)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType)
            .WriteLimited()
            .Capped(slots => slots.Writes)
            .ProducesTimeout()
            .Idempotent();

        // It adds data like POST /seed, so it takes the admin key like POST /seed.
        var ingest = routes.ServiceProvider.GetRequiredService<IOptions<IngestOptions>>().Value;
        var minRate = NdJsonLines.MinRate.From(ingest);
        a.MapGroup("").RequireAdminKey("POST /a").MapPost("/a", (HttpRequest request,
            [FromHeader(Name = Preferences.Header)] string? prefer, AppDb db, HttpResponse response, CancellationToken ct) =>
            Ingest(request, prefer, minRate, ingest.MaxRowsWithKeyAside, db, response, ct)).WithName("IngestA")
            .WithSummary("Adds many A with their Bs from an NDJSON body, all or nothing; with ids, copies or syncs them")
            .WithDescription("One A per line, `{\"data\": \"x\", \"bs\": [{\"data\": \"y\"}, {\"data\": null}]}` (`bs` optional), "
                + "sent as `application/x-ndjson`. Lines are copied into PostgreSQL (binary COPY) as they arrive, in one "
                + "transaction: A ids follow line order, and a bad line rejects the whole body with a 400 naming the line. "
                + "Into empty tables, a body of up to Ingest:MaxRowsWithKeyAside rows, A and B "
                + $"({IngestOptions.DefaultMaxRowsWithKeyAside:N0}), is read whole first and then copied with b's foreign key set aside "
                + "and checked once after, as PostgreSQL advises for bulk loads: reads of A wait for that copy. "
                + "A line may name its ids exactly as a line of `GET /a/stream`'s NDJSON does, "
                + "`{\"id\": 7, \"data\": \"x\", \"bs\": [{\"id\": 12, \"aId\": 7, \"data\": null}]}`: then every line names every "
                + "id (positive 32-bit integers, each once; a B's `aId` is its A's id), and the sequences move past the largest. "
                + "An id that exists is a 409 naming its line, unless `Prefer` says what to do with it: then the answer is 200 "
                + "with `Preference-Applied` and what happened to each table, `{\"a\": {\"inserted\", \"updated\", \"unchanged\"}, \"b\": {…}}`. "
                + "A merge writes only the rows that differ: a re-run on identical data changes nothing. "
                + "The body may be up to Ingest:MaxBodyBytes bytes (default 1 GiB). A body that comes slower than "
                + $"Ingest:MinBytesPerSecond ({IngestOptions.DefaultMinBytesPerSecond:N0}) bytes a second for "
                + $"Ingest:StallSeconds ({IngestOptions.DefaultStallSeconds}) seconds is cut with 408 and nothing is added.")
            .Accepts<NewA>(NdJsonLines.MediaType)
            .WithMetadata(new RequestSizeLimitAttribute(ingest.MaxBodyBytes))
            .ProducesProblem(StatusCodes.Status400BadRequest)
            .ProducesProblem(StatusCodes.Status408RequestTimeout)
            .ProducesProblem(StatusCodes.Status413PayloadTooLarge)
            .ProducesProblem(StatusCodes.Status415UnsupportedMediaType)
            .WithMetadata(Resolutions)
            .WriteLimited()
            .Capped(slots => slots.Streams)
            .Idempotent(streamedBody: true)
            // A body of a gigabyte takes minutes to arrive; the minimum rate (NdJsonLines.MinRate) drops a stalled client.
            .DisableRequestTimeout();

        return routes;
    }

    static async Task<Results<Ok<List<ADto>>, ValidationProblem>> GetPage(int? limit, int? after,
        [FromHeader(Name = Consistency.Header)] ConsistencyToken? consistencyToken, AppDb db, Replicas replicas, HttpContext http, CancellationToken ct)
    {
        if (Paging.Limit.Check(limit) is { } invalid)
            return invalid;
        var token = consistencyToken?.Lsn;
        var take = limit ?? Paging.DefaultLimit;
        var page = await replicas.ReadAsync(db, token, db => Queries.PageAsync(db, Paging.Start(after), take, ct, ReadSnapshot.On(http)), ct);
        if (page.More)
            Paging.SetNext(http, page.As[^1].Id, take);
        return TypedResults.Ok(page.As);
    }

    static async Task<Results<Ok<ADto>, StatusCodeHttpResult, ValidationProblem, ProblemHttpResult>> GetFirst(
        [FromHeader(Name = "If-None-Match")] string? ifNoneMatch, [FromHeader(Name = Consistency.Header)] ConsistencyToken? consistencyToken,
        AppDb db, Replicas replicas, HttpContext http, CancellationToken ct)
    {
        var token = consistencyToken?.Lsn;
        var response = http.Response;
        // xmin is the same on a standby as on the primary for the same row version: ETags hold on either.
        if (await replicas.ReadAsync(db, token, db => Queries.FirstAsync(db, ct, ReadSnapshot.On(http)), ct) is not { } first)
            return Problems.NoA();
        if (!ETags.TryNoneMatchHits(ifNoneMatch, first.Version, out var hits))
            return ETags.IfNoneMatch.Bad(ifNoneMatch!);
        ETags.Set(response, first.Version);
        return hits ? TypedResults.StatusCode(StatusCodes.Status304NotModified) : TypedResults.Ok(first.A);
    }

    static async Task<Results<AStreamResult, ValidationProblem>> Stream(int? after,
        [FromHeader(Name = Consistency.Header)] ConsistencyToken? consistencyToken, AppDb db, Replicas replicas, IOptions<StreamOptions> options, HttpContext http,
        CancellationToken ct)
    {
        var token = consistencyToken?.Lsn;
        // The standby connection stays lent until the stream has been written.
        http.Response.RegisterForDisposeAsync(await replicas.ReadFromStandbyAsync(db, token, ct));
        // No client holds a snapshot for longer than Streams:MaxSeconds (VACUUM and POST /reset wait for it): the stream is
        // cut as a broken connection is, and the client resumes with ?after=.
        var limit = new CancellationTokenSource(TimeSpan.FromSeconds(options.Value.MaxSeconds));
        limit.Token.Register(http.Abort);
        http.Response.RegisterForDispose(limit);
        return new AStreamResult(turn => Queries.AllA(db, Paging.Start(after), turn, ReadSnapshot.On(http)));
    }

    static async Task<Results<Ok<ADto>, ValidationProblem, ProblemHttpResult>> PatchFirst(
        [FromBody] PatchA patch, [FromHeader(Name = "If-Match")] string? ifMatch, IOptions<WriteOptions> writes,
        AppDb db, HttpResponse response, CancellationToken ct)
    {
        if (Problems.Validate(patch) is { } invalid)
            return invalid;
        if (System.Text.Encoding.UTF8.GetByteCount(patch.Data!) is var bytes && bytes > writes.Value.MaxDataBytes)
            return Problems.Invalid("data", $"data must be at most {writes.Value.MaxDataBytes:N0} bytes of UTF-8 (setting "
                + $"Writes:MaxDataBytes); it was {bytes:N0}.");
        if (!ETags.TryAccepted(ifMatch, out var accepted))
            return ETags.IfMatch.Bad(ifMatch!);

        // One statement changes exactly one column of one row, checking the version in the same WHERE, so
        // no concurrent writer can slip between check and write. The answer is read back in the same
        // transaction: the UPDATE's row lock keeps it equal to what was written.
        await using var tx = await db.BeginWriteAsync(ct);
        var updated = await db.A
            .Where(a => a.Id == db.A.Min(x => x.Id)
                && (accepted == null || accepted.Contains(EF.Property<uint>(a, AppDb.Version))))
            .ExecuteUpdateAsync(set => set.SetProperty(a => a.Data, patch.Data), ct);
        if (await Queries.FirstAsync(db, ct) is not { } first)
            return Problems.NoA();
        ETags.Set(response, first.Version);
        if (updated == 0)
            return Problems.VersionChanged();
        await tx.CommitAsync(ct);
        return TypedResults.Ok(first.A);
    }

    static readonly ParameterRule Resolutions = new(Preferences.Header,
        $"`{Preferences.Merge}`: each row with an id is inserted, or updated where the id exists (a B may move to another A); "
        + $"rows the body does not name are left alone. `{Preferences.Ignore}`: rows whose id exists are kept as they are, the "
        + "others inserted. Without either, an id that exists is a 409. Other preferences are ignored (RFC 7240).");

    static async Task<Results<Created<RowCounts>, Ok<SyncCounts>, ProblemHttpResult>> Ingest(HttpRequest request, string? prefer,
        NdJsonLines.MinRate minRate, int keyAside, AppDb db, HttpResponse response, CancellationToken ct)
    {
        if (!NdJsonLines.IsNdJson(request))
            return Problems.NotNdJson();
        var resolution = Preferences.ResolutionOf(prefer);
        (RowChanges A, RowChanges B) changes;
        try
        {
            changes = await db.AddAllAsync(NdJsonLines.ReadAsync(request.BodyReader, minRate, ct), resolution, ct, keyAside);
        }
        catch (IdExistsException e)
        {
            return Problems.IdExists(e.Message);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation)
        {
            // Ids above the tables' largest are copied without a lookup: another writer took one meanwhile.
            return Problems.IdExists($"Another writer added a row with an id of this body while it was copied ({e.ConstraintName}): "
                + "nothing was added. Send it again.");
        }
        var (a, b) = changes;
        if (a.Inserted + a.Updated + a.Unchanged == 0)
            return Problems.EmptyBody();
        if (resolution == Resolution.None)
            return TypedResults.Created("/a", new RowCounts(a.Inserted, b.Inserted));
        response.Headers[Preferences.AppliedHeader] = Preferences.Applied(resolution);
        return TypedResults.Ok(new SyncCounts(Counts(a), Counts(b)));
    }

    static RowChangeCounts Counts(RowChanges c) => new(c.Inserted, c.Updated, c.Unchanged);
}
