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
        return builder;
    }

    const string ResumeRule = "must be the id of an event of this feed, such as 1f0c9a3e-00000000016B3748-2: the feed goes on with "
        + "the changes after it (default: from now).";
    static readonly ParameterRule ResumeHeader = new("Last-Event-ID", "Last-Event-ID " + ResumeRule + " EventSource sends it when it reconnects.");
    static readonly ParameterRule ResumeAfter = new("after", "after " + ResumeRule + " For clients that cannot set headers; Last-Event-ID wins.");

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
                + "the changes after it, then live ones. Without an id the feed starts at the live head. 409 (before any event) when "
                + "the changes after that id are no longer known here (older than the window, another database, another "
                + "timeline, or before a restart of the API): refetch `GET /a` and subscribe without an id. An empty event every "
                + "`ChangeFeed:HeartbeatSeconds` (15) keeps proxies from closing an idle stream.")
            .WithMetadata(ResumeAfter, ResumeHeader)
            .ProducesValidationProblem()
            .ProducesProblem(StatusCodes.Status409Conflict)
            .ReadLimited()
            .Capped(slots => slots.Subscribers)
            // A subscription lasts as long as its client stays.
            .DisableRequestTimeout();

        return routes;
    }

    static async Task<Results<ChangeEvents, ValidationProblem, ProblemHttpResult>> Changes(
        [FromHeader(Name = "Last-Event-ID")] string? lastEventId, string? after, ChangeFeed feed, HttpContext http, CancellationToken ct)
    {
        // EventSource reconnects to the URL it started with and sends the id it last saw: the header is the newer.
        var (rule, resume) = lastEventId is { Length: > 0 } ? (ResumeHeader, lastEventId) : (ResumeAfter, after);
        ChangeId? from = null;
        if (resume is not null && !ChangeId.TryParse(resume, out from))
            return Problems.Invalid(rule.Name, $"{rule.Rule} It was '{resume}'.");
        try
        {
            // Slow subscribers are cut by aborting their connection: a write they do not read may never end otherwise.
            if (await feed.SubscribeAsync(from, http.Abort, ct) is not { } subscription)
                return Problems.MustRefetch();
            return new ChangeEvents(feed, subscription.Log, subscription.Subscriber);
        }
        catch (ChangeFeedUnavailableException e)
        {
            return Problems.ChangeFeedUnavailable(e.Message);
        }
    }
}
