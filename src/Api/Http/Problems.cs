using Npgsql;
using System.Text.Json;
using System.Text.RegularExpressions;
using AsyncOrmApi.Data;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.HostFiltering;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AsyncOrmApi.Http;

/// <summary>
/// The one place that shapes errors: every 4xx and 5xx leaves as <c>application/problem+json</c>, from a
/// handler (the factories below), from the framework (status code pages) or from an exception (the handler).
/// </summary>
public static class Problems
{
    public static IServiceCollection AddProblems(this IServiceCollection services)
    {
        services.AddProblemDetails(o => o.CustomizeProblemDetails = c => c.ProblemDetails.Detail ??= DefaultDetail(c.HttpContext, c.ProblemDetails.Status));
        services.AddExceptionHandler<ExceptionToProblem>();
        // Body and parameter binding failures become exceptions the handler answers with their own
        // status (400, 413, 415) and a detail that names the field; otherwise they are an empty 400.
        services.Configure<RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        // The host filter (AllowedHosts) runs before the app's middleware and answered an unknown Host with an HTML page:
        // without its message it answers an empty 400, which a startup filter outside it writes as a problem.
        services.Configure<HostFilteringOptions>(o => o.IncludeFailureMessage = false);
        services.Insert(0, ServiceDescriptor.Transient<IStartupFilter, UnknownHostProblem>());
        return services;
    }

    sealed class UnknownHostProblem : IStartupFilter
    {
        public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
        {
            app.Use(async (http, inner) =>
            {
                await inner(http);
                if (http.Response.StatusCode == StatusCodes.Status400BadRequest && !http.Response.HasStarted)
                    await http.RequestServices.GetRequiredService<IProblemDetailsService>().WriteAsync(new()
                    {
                        HttpContext = http,
                        ProblemDetails =
                        {
                            Status = StatusCodes.Status400BadRequest,
                            Title = "Bad request",
                            Detail = $"This server does not answer to the Host '{http.Request.Host}' (setting AllowedHosts).",
                        },
                    });
            });
            next(app);
        };
    }

    public static WebApplication UseProblems(this WebApplication app)
    {
        app.UseExceptionHandler();
        app.UseStatusCodePages();
        return app;
    }

    // Status code pages know only the status; say what the client can do about it.
    static string? DefaultDetail(HttpContext http, int? status) => status switch
    {
        StatusCodes.Status404NotFound => $"No endpoint at {http.Request.Path}: the operations are listed at /swagger.",
        StatusCodes.Status405MethodNotAllowed =>
            $"{http.Request.Method} is not allowed on {http.Request.Path}; the Allow header lists the methods that are.",
        StatusCodes.Status415UnsupportedMediaType => $"{http.Request.Method} {http.Request.Path} does not take a body of type "
            + $"'{http.Request.ContentType}': PATCH /a/first takes application/json, POST /a {NdJsonLines.MediaType}.",
        _ => null,
    };

    /// <summary>How long a client should wait before retrying while PostgreSQL is away.</summary>
    const int RetryAfterSeconds = 5;

    public static ProblemHttpResult DatabaseDown(HttpResponse response)
    {
        response.Headers.RetryAfter = RetryAfterSeconds.ToString();
        return TypedResults.Problem(statusCode: StatusCodes.Status503ServiceUnavailable, title: "Database unavailable",
            detail: $"PostgreSQL cannot be reached; nothing was changed. Try again in {RetryAfterSeconds} seconds.");
    }

    public static ProblemHttpResult TooManyBytes(HttpResponse response, TimeSpan wait, int perMinute)
    {
        var seconds = Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds));
        response.Headers.RetryAfter = seconds.ToString();
        return TypedResults.Problem(statusCode: StatusCodes.Status429TooManyRequests, title: "Too many bytes written",
            detail: $"This client's writes have used this minute's {perMinute:N0} bytes (RateLimit:WriteBytesPerMinute); nothing was "
                + $"done. Try again in {seconds} seconds.");
    }

    public static ProblemHttpResult TooManyRequests(HttpResponse response, TimeSpan wait)
    {
        var seconds = Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds));
        response.Headers.RetryAfter = seconds.ToString();
        return TypedResults.Problem(statusCode: StatusCodes.Status429TooManyRequests, title: "Too many requests",
            detail: $"This client has used its budget for this kind of request; nothing was done. Try again in {seconds} seconds.");
    }

    /// <summary>This client already holds as many streams of this kind as one client may.</summary>
    public static ProblemHttpResult TooManyStreams(HttpResponse response, string kind, int perClient)
    {
        response.Headers.RetryAfter = StreamSlots.RetryAfterSeconds.ToString();
        return TypedResults.Problem(statusCode: StatusCodes.Status429TooManyRequests, title: $"Too many open {kind}s",
            detail: $"This client has {perClient} {kind}s open, as many as one client may; nothing was done. Try again once one "
                + $"has ended (in {StreamSlots.RetryAfterSeconds} seconds, say).");
    }

    /// <summary>The server holds as many streams of this kind as it allows in all.</summary>
    public static ProblemHttpResult StreamsFull(HttpResponse response, string kind, int total)
    {
        response.Headers.RetryAfter = StreamSlots.RetryAfterSeconds.ToString();
        return TypedResults.Problem(statusCode: StatusCodes.Status503ServiceUnavailable, title: "Server busy",
            detail: $"The server has {total} {kind}s open, as many as it allows at once; nothing was done. Try again in "
                + $"{StreamSlots.RetryAfterSeconds} seconds.");
    }

    public static ProblemHttpResult TablesBusy(HttpResponse response, TimeSpan waited)
    {
        response.Headers.RetryAfter = RetryAfterSeconds.ToString();
        return TypedResults.Problem(statusCode: StatusCodes.Status503ServiceUnavailable, title: "The tables are busy",
            detail: $"Other transactions used the tables a and b for all of {waited.TotalSeconds:0.#} s (an ingest, say); nothing "
                + $"was changed. Try again in {RetryAfterSeconds} seconds.");
    }

    public static ProblemHttpResult TimedOut(int seconds) =>
        TypedResults.Problem(statusCode: StatusCodes.Status504GatewayTimeout, title: "Request timed out",
            detail: $"No answer within {seconds} seconds: the request and its database query were cancelled.");

    public static ProblemHttpResult NoA() =>
        TypedResults.Problem(statusCode: StatusCodes.Status404NotFound, title: "No A",
            detail: "Table a has no rows: POST /seed adds the seed's graph.");

    public static ProblemHttpResult AdminOff() =>
        TypedResults.Problem(statusCode: StatusCodes.Status403Forbidden, title: "Admin endpoints are off",
            detail: "No admin key is configured on the server: set Admin__ApiKey to turn the admin operations (POST /reset, POST /seed, POST /a) on.");

    public static ProblemHttpResult CrossSite() =>
        TypedResults.Problem(statusCode: StatusCodes.Status403Forbidden, title: "Cross-site request refused",
            detail: "The admin operations (POST /reset, POST /seed, POST /a) take no requests that a browser sends for another "
                + "site (Sec-Fetch-Site: cross-site, or an Origin other than this server's): nothing was changed.");

    public static ProblemHttpResult AdminKeyMissing() =>
        TypedResults.Problem(statusCode: StatusCodes.Status401Unauthorized, title: "Admin key required",
            detail: $"Send the admin key in the {AdminKey.Header} header.");

    public static ProblemHttpResult AdminKeyWrong() =>
        TypedResults.Problem(statusCode: StatusCodes.Status403Forbidden, title: "Wrong admin key",
            detail: $"The {AdminKey.Header} header does not hold the admin key.");

    public static ProblemHttpResult VersionChanged() =>
        TypedResults.Problem(statusCode: StatusCodes.Status412PreconditionFailed, title: "The first A has changed",
            detail: "If-Match does not hold the first A's current ETag: nothing was changed. GET /a/first for the "
                + "current version (this answer's ETag) and try again.");

    public static ProblemHttpResult NotNdJson() =>
        TypedResults.Problem(statusCode: StatusCodes.Status415UnsupportedMediaType, title: "Unsupported media type",
            detail: $"The body must be NDJSON, one A per line, sent with Content-Type: {NdJsonLines.MediaType}.");

    public static ProblemHttpResult EmptyBody() =>
        TypedResults.Problem(statusCode: StatusCodes.Status400BadRequest, title: BadRequest,
            detail: "The body holds no A: send one JSON object per line, such as {\"data\": \"x\", \"bs\": [{\"data\": null}]}.");

    public static ProblemHttpResult IdExists(string detail) =>
        TypedResults.Problem(statusCode: StatusCodes.Status409Conflict, title: "The id exists already", detail: detail);

    public static ProblemHttpResult MustRefetch() =>
        TypedResults.Problem(statusCode: StatusCodes.Status409Conflict, title: "must-refetch",
            detail: "must-refetch: the changes after this id are no longer known here (older than the feed keeps, from another "
                + "database or timeline, or from before the API restarted). Read again (GET /a/stream), then GET /a/changes?after= that read's Change-Position.");

    public static ProblemHttpResult ChangeFeedUnavailable(string why) =>
        TypedResults.Problem(statusCode: StatusCodes.Status503ServiceUnavailable, title: "Change feed unavailable", detail: why);

    /// <summary>How long a retry should wait for the first request of its <c>Idempotency-Key</c> to finish.</summary>
    const int KeyInUseRetryAfterSeconds = 1;

    public static ProblemHttpResult KeyInUse(HttpResponse response)
    {
        response.Headers.RetryAfter = KeyInUseRetryAfterSeconds.ToString();
        return TypedResults.Problem(statusCode: StatusCodes.Status409Conflict, title: "A request with this Idempotency-Key is running",
            detail: "The first request with this Idempotency-Key has not finished yet; nothing was done. Try again in "
                + $"{KeyInUseRetryAfterSeconds} second with the same key: once it has finished, its answer is replayed.");
    }

    public static ProblemHttpResult KeyReused() =>
        TypedResults.Problem(statusCode: StatusCodes.Status422UnprocessableEntity, title: "Idempotency-Key used for another request",
            detail: "This Idempotency-Key was first sent with another request (method, path, query, body, or the headers "
                + "Content-Type, If-Match and Prefer); nothing was done. A key stands for one request: send a new key for a new one.");

    public static ValidationProblem Invalid(string field, string message) =>
        TypedResults.ValidationProblem(new Dictionary<string, string[]> { [field] = [message] },
            detail: message, title: BadRequest);

    /// <summary>The title of every 400, validation or not: the status's own words. What is wrong is in the detail.</summary>
    public const string BadRequest = "Bad request";

    public static ValidationProblem? Validate(PatchA patch) => patch.Data switch
    {
        null => Invalid("data", "data is required: a string (it may be empty)."),
        var s when s.Contains('\0') => Invalid("data", "data must not contain the NUL character (U+0000): PostgreSQL text cannot store it."),
        _ => null,
    };

    /// <summary>
    /// 503, in every environment, when PostgreSQL refuses the API's role a privilege (SQLSTATE 42501): what is missing, in
    /// PostgreSQL's words, and how an administrator grants it. Not the client's fault, and not an outage that heals.
    /// </summary>
    static IResult LacksPrivilege(PostgresException denied) =>
        TypedResults.Problem(statusCode: StatusCodes.Status503ServiceUnavailable, title: "The database role lacks a privilege",
            detail: $"PostgreSQL refused the API's role: {denied.MessageText}. "
                + (denied.MessageText.Contains("replication", StringComparison.OrdinalIgnoreCase)
                    ? "GET /a/changes needs a role with REPLICATION (ALTER ROLE ... REPLICATION). "
                    : "")
                + "An administrator grants what the API needs once, with script/sql/grant.sql (docs/deploy.md).");

    /// <summary>A row without an id needs the next value of a sequence that has reached integer's largest (ids came that far).</summary>
    public static ProblemHttpResult SequenceExhausted(PostgresException exhausted) =>
        TypedResults.Problem(statusCode: StatusCodes.Status409Conflict, title: "An id sequence is exhausted",
            detail: $"PostgreSQL: {exhausted.MessageText}. The table's ids have reached 2,147,483,647, the largest its integer id "
                + "column holds, so no row without an id can be added; nothing was written. Send rows with ids of their own "
                + "(POST /a), or start again with POST /reset.");

    /// <summary>Answers exceptions that escape a handler; anything unexpected is a 500 without internals.</summary>
    /// <remarks>ASP.NET Core 10 does not log exceptions that a handler answers: this one logs what is not the client's fault.</remarks>
    sealed class ExceptionToProblem(IHostEnvironment env, ILogger<ExceptionToProblem> log) : IExceptionHandler
    {
        public async ValueTask<bool> TryHandleAsync(HttpContext http, Exception exception, CancellationToken ct)
        {
            IResult problem;
            if (exception is ConsistencyTokenAheadException ahead)
                problem = Invalid(Consistency.Header, ahead.Message);
            else if (exception is BadHttpRequestException bad)
            {
                // 408: a body that stalled. The rest of it is not waited for: the connection closes after this answer.
                if (bad.StatusCode == StatusCodes.Status408RequestTimeout)
                    http.Response.Headers.Connection = "close";
                // A parameter the framework could not bind answers as one out of range does: its rule, and what it was.
                problem = bad.InnerException is null && Unbound(http, bad) is var (rule, value)
                    ? rule.Bad(value)
                    : TypedResults.Problem(statusCode: bad.StatusCode,
                        title: bad.StatusCode == StatusCodes.Status400BadRequest ? BadRequest : null, detail: Describe(http, bad));
            }
            else if (Postgres(exception, "2200H" /* sequence_generator_limit_exceeded */) is { } exhausted)
                problem = SequenceExhausted(exhausted);
            else if (Postgres(exception, PostgresErrorCodes.InsufficientPrivilege) is { } denied)
            {
                log.LogWarning("{Method} {Path}: the database role lacks a privilege ({Error})", http.Request.Method, http.Request.Path,
                    denied.MessageText);
                problem = LacksPrivilege(denied);
            }
            else if (Outage.Is(exception))
            {
                log.LogWarning("{Method} {Path}: PostgreSQL unavailable ({Error})", http.Request.Method, http.Request.Path,
                    exception.GetBaseException().Message);
                Outage.DropIdleConnections(http.RequestServices.GetService<AppDb>());
                problem = DatabaseDown(http.Response);
            }
            else
            {
                log.LogError(exception, "{Method} {Path} failed", http.Request.Method, http.Request.Path);
                problem = TypedResults.Problem(statusCode: StatusCodes.Status500InternalServerError, title: "Internal server error",
                    detail: env.IsDevelopment() ? exception.ToString() : "The server failed to answer; the error is logged.");
            }
            await problem.ExecuteAsync(http);
            return true;
        }

        static PostgresException? Postgres(Exception exception, string sqlState)
        {
            for (Exception? e = exception; e is not null; e = e.InnerException)
                if (e is PostgresException found && found.SqlState == sqlState)
                    return found;
            return null;
        }

        // The framework's message names the handler's parameter and its .NET type ("Failed to read parameter \"PatchA patch\"
        // from the request body as JSON."); the JSON reader's, the place in the body. Neither the type nor the parameter is
        // the client's business: the body is "the body", and a value of the wrong type is told by its path alone.
        static string Describe(HttpContext http, BadHttpRequestException bad) => bad.InnerException switch
        {
            JsonException { InnerException: JsonException syntax } => $"{Said(bad)} The body is not valid JSON: {syntax.Message}",
            JsonException { InnerException: { } cause } json => $"{Said(bad)} The value at {json.Path} is not valid: {cause.Message}",
            // Strict bodies (WireJson.Configure): a field twice, or one the body does not have. The reader's words name a .NET
            // type; these name the field. The reader has no error code for either, only these messages.
            JsonException { Path: { } path } json when json.Message.StartsWith("Duplicate property", StringComparison.Ordinal)
                || json.Message.Contains("could not be mapped", StringComparison.Ordinal) =>
                $"{Said(bad)} The field at {path} is unknown or appears twice: the body holds data (a string) once, and nothing else.",
            JsonException { Path: { } path } json when json.Message.StartsWith("The JSON value could not be converted") =>
                $"{Said(bad)} The value at {path} has the wrong type (line {json.LineNumber}, byte {json.BytePositionInLine}).",
            JsonException { Path: { } path } => $"{Said(bad)} The JSON at {path} is not the body this endpoint takes.",
            JsonException => $"{Said(bad)} The body is not the JSON this endpoint takes.",
            _ => Said(bad),
        };

        /// <summary>The framework's sentence, without the handler's parameter and its type. Only words to go by: no code.</summary>
        static string Said(BadHttpRequestException bad) => Regex.Match(bad.Message, "^(?<what>.*)parameter \"[^\"]*? (?<name>\\w+)\"(?<rest>.*)$") switch
        {
            { Success: false } => bad.Message,
            var m when m.Groups["rest"].Value.Contains("request body") => "The body could not be read as JSON.",
            var m when m.Groups["rest"].Value.Contains("not provided from body") => "The body is missing: send a JSON object.",
            var m => $"{m.Groups["what"].Value}parameter {m.Groups["name"].Value}{m.Groups["rest"].Value}",
        };

        /// <summary>
        /// The rule of the parameter the framework could not bind, and the value it was. The framework says which in words
        /// only ("Failed to bind parameter \"ConsistencyToken? consistencyToken\" from \"abc\"."); the handler's parameter of
        /// that name says the header or query name its rule goes by.
        /// </summary>
        static (ParameterRule Rule, string Value)? Unbound(HttpContext http, BadHttpRequestException bad)
        {
            var endpoint = Endpoints.Of(http);
            if (endpoint?.Metadata.GetMetadata<System.Reflection.MethodInfo>() is not { } handler
                || Regex.Match(bad.Message, "^Failed to bind parameter \"[^\"]* (?<name>\\w+)\" from \"(?<value>.*)\"\\.$") is not { Success: true } m)
                return null;
            var parameter = handler.GetParameters().FirstOrDefault(p => p.Name == m.Groups["name"].Value);
            var name = (parameter?.GetCustomAttributes(false).OfType<Microsoft.AspNetCore.Http.Metadata.IFromHeaderMetadata>().FirstOrDefault())?.Name
                ?? m.Groups["name"].Value;
            return endpoint.Metadata.GetOrderedMetadata<ParameterRule>().FirstOrDefault(r => r.Name == name) is { } rule
                ? (rule, m.Groups["value"].Value)
                : null;
        }
    }
}

/// <summary>
/// What a parameter (of the query or a header) accepts, in words, and for an integer its range: endpoint metadata that the
/// OpenAPI document shows as the parameter's description, and the one 400 for it, whether its value is out of range
/// (<see cref="Check"/>) or not of its type at all (the exception handler).
/// </summary>
/// <remarks>
/// Not .NET 10's <c>AddValidation()</c> with <c>[Range(1, Paging.MaxLimit)]</c> on <c>limit</c>, tried: <c>?limit=0</c> then
/// answered its own 400, titled "One or more validation errors occurred." where every other 400 is "Bad request", with no
/// <c>detail</c> and "The field limit must be between 1 and 10000." in <c>errors</c>, while <c>?limit=abc</c> still came
/// here. The one rule would again be written twice (the attribute and its message), with a problem customization for the
/// title on top.
/// </remarks>
public sealed record ParameterRule(string Name, string Rule, int Min = int.MinValue, int Max = int.MaxValue)
{
    public ValidationProblem? Check(int? value) => value is null || (value >= Min && value <= Max) ? null : Bad(value.ToString()!);

    public ValidationProblem Bad(string value) => Problems.Invalid(Name, $"{Rule} It was '{value}'.");
}
