using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;

namespace AsyncOrmApi.Changes;

/// <summary>GET /a/changes: the change feed as Server-Sent Events, and its registration.</summary>
public static class ChangeFeedEndpoints
{
    /// <summary>One logical replication reader per process, shared by every subscriber of GET /a/changes.</summary>
    public static WebApplicationBuilder AddChangeFeed(this WebApplicationBuilder builder)
    {
        builder.Services.AddOptions<ChangeFeedOptions>().BindConfiguration(ChangeFeedOptions.Section)
            .ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddSingleton<ChangeFeed>();
        builder.Services.ConfigureSwaggerGen(o => o.OperationFilter<ChangePositionDocs>());
        return builder;
    }

    public const string PositionHeader = "Change-Position";

    /// <summary>
    /// Answers every read of A (<see cref="ReadSnapshot.Metadata"/>) with its <c>Change-Position</c>, the reader started
    /// before the read, so that the read's changes are in the window when its client subscribes.
    /// </summary>
    public static WebApplication UseChangePositions(this WebApplication app)
    {
        var feed = app.Services.GetRequiredService<ChangeFeed>();
        app.Use(async (http, next) =>
        {
            // Not for the warm start's own requests: a process that only starts holds no slot.
            if (http.GetEndpoint()?.Metadata.GetMetadata<ReadSnapshot.Metadata>() is null || Http.WarmStart.IsWarmUp(http)
                || await feed.PositionSourceAsync(http.RequestAborted) is not { } source)
            {
                await next(http);
                return;
            }
            http.Response.OnStarting(() =>
            {
                if (http.Features.Get<ReadSnapshot>() is { } snapshot && http.Response.StatusCode is 200 or 304)
                    http.Response.Headers[PositionHeader] = ChangePosition.Of(source, snapshot).ToString();
                return Task.CompletedTask;
            });
            await next(http);
        });
        return app;
    }

    sealed class ChangePositionDocs : Swashbuckle.AspNetCore.SwaggerGen.IOperationFilter
    {
        public void Apply(Microsoft.OpenApi.OpenApiOperation operation, Swashbuckle.AspNetCore.SwaggerGen.OperationFilterContext context)
        {
            if (!context.ApiDescription.ActionDescriptor.EndpointMetadata.OfType<ReadSnapshot.Metadata>().Any())
                return;
            foreach (var (code, response) in operation.Responses ?? [])
                if (code is "200" or "304" && response is Microsoft.OpenApi.OpenApiResponse r)
                    (r.Headers ??= new Dictionary<string, Microsoft.OpenApi.IOpenApiHeader>())[PositionHeader] = new Microsoft.OpenApi.OpenApiHeader
                    {
                        Description = "Where this read ends in the change feed: `GET /a/changes?after=` it (or `Last-Event-ID`) sends "
                            + "exactly the committed changes this read did not see, then live ones. Absent when the feed cannot run "
                            + "(wal_level is not logical).",
                        Schema = new Microsoft.OpenApi.OpenApiSchema { Type = Microsoft.OpenApi.JsonSchemaType.String },
                    };
        }
    }

    const string ResumeRule = "must be the id of an event of this feed, such as 1f0c9a3e-00000000016B3748-2, or the Change-Position "
        + "of a read (GET /a, /a/first, /a/stream): the feed goes on with the changes after it, or exactly the changes that read "
        + "did not see (default: from now).";
    static readonly ParameterRule ResumeHeader = new("Last-Event-ID", "Last-Event-ID " + ResumeRule + " EventSource sends it when it reconnects.");
    static readonly ParameterRule ResumeAfter = new("after", "after " + ResumeRule + " For clients that cannot set headers; Last-Event-ID wins.");
    static readonly ParameterRule TableFilter = new("table", "table must be a or b: only that table's changes (and reset). Default: both.");

    public static IEndpointRouteBuilder MapChanges(this IEndpointRouteBuilder routes)
    {
        routes.MapGroup("/a").WithTags("A").ProducesProblem(StatusCodes.Status503ServiceUnavailable)
            .MapGet("/changes", Changes).WithName("AChanges")
            .WithSummary("A live feed of the changes to a and b by any writer, as Server-Sent Events")
            .WithDescription("`text/event-stream`, committed changes in commit order, a transaction's together, from PostgreSQL's "
                + "logical replication. Events: `a.insert`, `a.update`, `a.delete` (`{\"id\",\"data\"}`), `b.insert`, `b.update`, "
                + "`b.delete` (`{\"id\",\"aId\",\"data\"}`; deletes carry the id), and `reset` (tables dropped, recreated or "
                + "truncated, or one transaction larger than the resume window): refetch `GET /a`. Each event's `id` is its commit's "
                + "WAL position and its ordinal; reconnect with `Last-Event-ID` (or `?after=` where headers cannot be set) for exactly "
                + "the changes after it, then live ones. Without an id the feed starts now (after its own snapshot). 409 (before any event) when "
                + "the changes after that id are no longer known here (older than the window, another database, another "
                + "timeline, or before a restart of the API): read again and subscribe from that read's `Change-Position`. An empty event every "
                + "`ChangeFeed:HeartbeatSeconds` (15) keeps proxies from closing an idle stream. A client that keeps a copy reads "
                + "first (`GET /a/stream`) and subscribes with `?after=` its `Change-Position`: it gets exactly the changes the "
                + "read did not see, none twice, none missed; after a 409 it does the same again. `?table=a` or `?table=b` "
                + "sends only that table's changes (and `reset`).")
            .WithMetadata(ResumeAfter, ResumeHeader, TableFilter)
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ReadLimited()
            .Capped(slots => slots.Subscribers)
            // A subscription lasts as long as its client stays.
            .DisableRequestTimeout();

        return routes;
    }

    static async Task<Results<ChangeEvents, ValidationProblem, ProblemHttpResult>> Changes(
        [FromHeader(Name = "Last-Event-ID")] string? lastEventId, string? after, string? table, ChangeFeed feed, HttpContext http,
        CancellationToken ct)
    {
        if (table is not (null or "a" or "b"))
            return Problems.Invalid(TableFilter.Name, $"{TableFilter.Rule} It was '{table}'.");
        // EventSource reconnects to the URL it started with and sends the id it last saw: the header is the newer.
        var (rule, resume) = lastEventId is { Length: > 0 } ? (ResumeHeader, lastEventId) : (ResumeAfter, after);
        var since = new Since(null, null, table);
        if (resume is not null)
        {
            if (ChangeId.TryParse(resume, out var id))
                since = since with { After = id };
            else if (ChangePosition.TryParse(resume, out var read))
                since = since with { Position = read };
            else
                return Problems.Invalid(rule.Name, $"{rule.Rule} It was '{resume}'.");
        }
        try
        {
            // Slow subscribers are cut by aborting their connection: a write they do not read may never end otherwise.
            if (await feed.SubscribeAsync(since, http.Abort, ct) is not { } subscription)
                return Problems.MustRefetch();
            return new ChangeEvents(feed, subscription.Log, subscription.Subscriber);
        }
        catch (ChangeFeedUnavailableException e)
        {
            return Problems.ChangeFeedUnavailable(e.Message);
        }
    }
}
