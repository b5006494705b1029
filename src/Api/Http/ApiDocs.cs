using Microsoft.OpenApi;
using Swashbuckle.AspNetCore.SwaggerGen;

namespace AsyncOrmApi.Http;

/// <summary>The OpenAPI document (from the endpoints' own metadata) and Swagger UI.</summary>
public static class ApiDocs
{
    public static IServiceCollection AddApiDocs(this IServiceCollection services)
    {
        services.AddEndpointsApiExplorer();
        services.AddSwaggerGen(o =>
        {
            o.SwaggerDoc("v1", new OpenApiInfo
            {
                Title = "AsyncOrmApi",
                Version = "v1",
                Description = "SQLAlchemy's asyncio ORM example (async_orm.py) served over HTTP on EF Core and PostgreSQL: "
                    + "reset the tables, seed the A/B graph, read it in pages or streamed, rename the first A, add many A at once.",
                Contact = new OpenApiContact { Name = "AsyncOrmApi maintainers" },
                License = new OpenApiLicense { Name = "MIT", Url = new Uri("https://opensource.org/licenses/MIT") },
            });
            o.AddSecurityDefinition(AdminKeyScheme, new OpenApiSecurityScheme
            {
                Type = SecuritySchemeType.ApiKey,
                In = ParameterLocation.Header,
                Name = AdminKey.Header,
                Description = "The admin key (setting Admin:ApiKey) for POST /reset, POST /seed and POST /a; not needed in Development.",
            });
            // The token travels as text (0/16B3748), not as the object it binds to.
            o.MapType<ConsistencyToken>(() => new OpenApiSchema { Type = JsonSchemaType.String });
            o.OperationFilter<AdminKeyRequirement>();
            o.OperationFilter<ParameterRules>();
            o.OperationFilter<ResponseHeaders>();
            o.OperationFilter<IdempotencyKeys>();
            o.OperationFilter<TryItOutExamples>();
            o.DocumentFilter<TagDescriptions>();
        });
        return services;
    }

    const string AdminKeyScheme = "AdminKey";

    /// <summary>
    /// Puts the admin key on the operations that take it, so Swagger UI's Authorize button sends it, and says of
    /// every other operation that it is open (<c>security: []</c>), so that clients and linters need not guess.
    /// </summary>
    sealed class AdminKeyRequirement : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context) =>
            operation.Security = context.ApiDescription.ActionDescriptor.EndpointMetadata.OfType<AdminKeyMetadata>().Any()
                ? [new() { [new OpenApiSecuritySchemeReference(AdminKeyScheme, context.Document)] = [] }]
                : [];
    }

    /// <summary>Describes each query parameter by the rule its 400 quotes (<see cref="ParameterRule"/>).</summary>
    sealed class ParameterRules : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            var rules = context.ApiDescription.ActionDescriptor.EndpointMetadata.OfType<ParameterRule>().ToList();
            foreach (var parameter in operation.Parameters?.OfType<OpenApiParameter>() ?? [])
                if (rules.FirstOrDefault(r => r.Name == parameter.Name) is { } rule)
                    parameter.Description = rule.Rule;
        }
    }

    /// <summary>The writes that take <c>Idempotency-Key</c>: the header, and what a replay answers.</summary>
    sealed class IdempotencyKeys : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            if (!context.ApiDescription.ActionDescriptor.EndpointMetadata.OfType<Idempotency.IdempotentMetadata>().Any())
                return;
            (operation.Parameters ??= []).Add(new OpenApiParameter
            {
                Name = Idempotency.IdempotencyKey.Header,
                In = ParameterLocation.Header,
                Description = Idempotency.IdempotencyKey.Rule.Rule + " A key is kept for Idempotency:Retention (a day by default); "
                    + "409 while the first request with it still runs. Without it, the write runs every time it is sent.",
                Schema = new OpenApiSchema { Type = JsonSchemaType.String, MinLength = 1, MaxLength = Idempotency.IdempotencyKey.MaxLength },
            });
            foreach (var (code, response) in operation.Responses ?? [])
            {
                if (response is not OpenApiResponse r)
                    continue;
                if (code == "409")
                    r.Description = "A request with this Idempotency-Key is still running: nothing was done; retry after Retry-After.";
                if (code == "422")
                    r.Description = "This Idempotency-Key was sent before with another request: nothing was done.";
                if (code.StartsWith('2'))
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())[Idempotency.StoredAnswer.ReplayedHeader] = new OpenApiHeader
                    {
                        Description = "`true` on a retry's answer: the stored answer of the first request with this Idempotency-Key, "
                            + "byte for byte; nothing was written again.",
                        Schema = new OpenApiSchema { Type = JsonSchemaType.String },
                    };
            }
        }
    }

    /// <summary>
    /// What Swagger UI's Try it out pre-fills, so that Execute as it stands succeeds (or answers what the operation says):
    /// each header a string with its pattern and an example, each request body an example. Without them Swagger UI built
    /// <c>Consistency-Token: lsn,{}</c> from the token's type and a pretty-printed JSON object as the NDJSON body, both 400.
    /// </summary>
    sealed class TryItOutExamples : IOperationFilter
    {
        const string ETagList = """^(\*|(W/)?"[!#-~]*"(\s*,\s*(W/)?"[!#-~]*")*)$""";

        /// <summary>Header, pattern, example: an example that is harmless to send as it is.</summary>
        static readonly Dictionary<string, (string Pattern, string Example)> Headers = new(StringComparer.OrdinalIgnoreCase)
        {
            // 0/0 is behind every write, so any server has replayed it.
            [Consistency.Header] = ("^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$", "0/0"),
            ["If-Match"] = (ETagList, "*"),
            // Version 0 is no row's: the first A is answered in full.
            ["If-None-Match"] = (ETagList, "\"0\""),
            [Preferences.Header] = ("^resolution=(merge|ignore)-duplicates$", Preferences.Merge),
            ["Last-Event-ID"] = ("^[0-9a-f]{8}-[0-9A-F]{16}-[0-9]+$", "00000000-0000000000000000-0"),
        };

        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            foreach (var parameter in operation.Parameters?.OfType<OpenApiParameter>() ?? [])
            {
                if (parameter.In != ParameterLocation.Header)
                    continue;
                var (pattern, example) = parameter.Name == Idempotency.IdempotencyKey.Header
                    // One key per operation: a second Execute replays the first answer, as the header's description says.
                    ? ("^[ -~]{1,255}$", $"try-it-out-{context.ApiDescription.HttpMethod?.ToLowerInvariant()}-{context.ApiDescription.RelativePath?.Trim('/').Replace('/', '-')}")
                    : Headers.TryGetValue(parameter.Name!, out var known) ? known : ("^[ -~]*$", "");
                var schema = parameter.Schema as OpenApiSchema ?? new OpenApiSchema();
                schema.Type = JsonSchemaType.String;
                schema.Pattern = pattern;
                schema.Format = null;
                parameter.Schema = schema;
                if (example.Length > 0)
                    parameter.Example = System.Text.Json.Nodes.JsonValue.Create(example);
            }
            foreach (var (type, body) in operation.RequestBody?.Content ?? new Dictionary<string, IOpenApiMediaType>())
                if (body is OpenApiMediaType media)
                    media.Example = type switch
                {
                        NdJsonLines.MediaType => System.Text.Json.Nodes.JsonValue.Create(
                            "{\"data\":\"a4\",\"bs\":[{\"data\":\"b1\"},{\"data\":\"b2\"}]}\n{\"data\":\"a5\",\"bs\":[]}\n"),
                        "application/json" when operation.OperationId == "PatchFirstA" => new System.Text.Json.Nodes.JsonObject { ["data"] = "new data" },
                        _ => media.Example,
                    };
        }
    }

    sealed class TagDescriptions : IDocumentFilter
    {
        public void Apply(OpenApiDocument document, DocumentFilterContext context) => document.Tags = new HashSet<OpenApiTag>
        {
            new() { Name = "A", Description = "The seed's rows: A with their Bs, read in pages or streamed, the first A renamed, many A added at once." },
            new() { Name = "Admin", Description = "The seed's set-up steps; they take the admin key outside Development." },
        };
    }

    /// <summary>
    /// Documents the headers the handlers set: ETag beside the conditional requests, Link on a page, Retry-After on 429 and 503,
    /// Consistency-Token on every write's success.
    /// </summary>
    sealed class ResponseHeaders : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            var conditional = operation.Parameters?.Any(p => p.Name is "If-Match" or "If-None-Match") == true;
            var paged = operation.Parameters?.Any(p => p.Name == Paging.Limit.Name) == true;
            foreach (var (code, response) in operation.Responses ?? [])
            {
                if (response is not OpenApiResponse r)
                    continue;
                if (conditional && code is "200" or "304" or "412")
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())["ETag"] = Header(
                        "The first A's current version, a strong ETag: send it back in If-Match or If-None-Match.");
                if (paged && code == "200")
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())["Link"] = Header(
                        "When more A follow: `</a?after=ID&limit=N>; rel=\"next\"` (RFC 8288), the next page's URL. Absent on the last page.");
                if (context.ApiDescription.HttpMethod != "GET" && code.StartsWith('2'))
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())[Consistency.Header] = Header(
                        "The WAL position of this write's commit. Send it back in the request header of the same name to read this "
                        + "write even from a standby that lags.");
                if (code == "200" && operation.Parameters?.Any(p => p.Name == Preferences.Header) == true)
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())[Preferences.AppliedHeader] = Header(
                        "The resolution preference that was applied (RFC 7240), such as `resolution=merge-duplicates`.");
                if (code is "409" && context.ApiDescription.HttpMethod != "GET" || code is "429" or "503")
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())["Retry-After"] = Header(
                        "Seconds to wait before trying again.");
            }
        }

        static OpenApiHeader Header(string description) =>
            new() { Description = description, Schema = new OpenApiSchema { Type = JsonSchemaType.String } };
    }

    /// <summary>
    /// Swagger UI takes any media type that contains "json" for JSON and shows an NDJSON example as one quoted string (or a
    /// pretty-printed object), which POST /a refuses: this turns such a body back into lines, one value a line, before it
    /// is sent. A body of several lines (NDJSON as typed) goes as it is.
    /// </summary>
    const string NdJsonBody = """
        (request) => {
          const type = request.headers && (request.headers['Content-Type'] || request.headers['content-type']) || '';
          if (type.startsWith('application/x-ndjson') && typeof request.body === 'string') {
            try {
              const value = JSON.parse(request.body);
              request.body = typeof value === 'string' ? value
                : (Array.isArray(value) ? value : [value]).map(line => JSON.stringify(line)).join('\n') + '\n';
            } catch (e) { }
          }
          return request;
        }
        """;

    public static WebApplication UseApiDocs(this WebApplication app)
    {
        // The server is wherever the document was fetched from: a URL relative to it (OpenAPI 3.0, 4.1) stays
        // right behind any host name or proxy, where an absolute one would be a guess.
        // Only on their own paths: the UI's middleware matches every request's path against a regular expression, 0.8% of a
        // GET /a's CPU (perf, wrk -t1 -c32; issue 20).
        app.UseWhen(http => http.Request.Path.StartsWithSegments("/swagger"), docs => docs
            .UseSwagger(o => o.PreSerializeFilters.Add((document, request) =>
                document.Servers = [new OpenApiServer { Url = request.PathBase.HasValue ? request.PathBase.Value : "/" }]))
            .UseSwaggerUI(o =>
            {
                o.DocumentTitle = "AsyncOrmApi";
                o.UseRequestInterceptor(NdJsonBody);
            }));
        app.MapGet("/", () => TypedResults.Redirect("/swagger")).ExcludeFromDescription();
        return app;
    }
}
