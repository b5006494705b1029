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
                    + "reset the tables, seed the A/B graph, read it buffered or streamed, rename the first A.",
            });
            o.AddSecurityDefinition(AdminKeyScheme, new OpenApiSecurityScheme
            {
                Type = SecuritySchemeType.ApiKey,
                In = ParameterLocation.Header,
                Name = AdminKey.Header,
                Description = "The admin key (setting Admin:ApiKey) for POST /reset and POST /seed; not needed in Development.",
            });
            o.OperationFilter<AdminKeyRequirement>();
            o.OperationFilter<ResponseHeaders>();
        });
        return services;
    }

    const string AdminKeyScheme = "AdminKey";

    /// <summary>Puts the admin key on the operations that take it, so Swagger UI's Authorize button sends it.</summary>
    sealed class AdminKeyRequirement : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            if (context.ApiDescription.ActionDescriptor.EndpointMetadata.OfType<AdminKeyMetadata>().Any())
                operation.Security = [new() { [new OpenApiSecuritySchemeReference(AdminKeyScheme, context.Document)] = [] }];
        }
    }

    /// <summary>Documents the headers the handlers set: ETag beside the conditional requests, Retry-After on 503.</summary>
    sealed class ResponseHeaders : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            var conditional = operation.Parameters?.Any(p => p.Name is "If-Match" or "If-None-Match") == true;
            foreach (var (code, response) in operation.Responses ?? [])
            {
                if (response is not OpenApiResponse r)
                    continue;
                if (conditional && code is "200" or "304" or "412")
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())["ETag"] = Header(
                        "The first A's current version, a strong ETag: send it back in If-Match or If-None-Match.");
                if (code == "503")
                    (r.Headers ??= new Dictionary<string, IOpenApiHeader>())["Retry-After"] = Header(
                        "Seconds to wait before trying again.");
            }
        }

        static OpenApiHeader Header(string description) =>
            new() { Description = description, Schema = new OpenApiSchema { Type = JsonSchemaType.String } };
    }

    public static WebApplication UseApiDocs(this WebApplication app)
    {
        app.UseSwagger();
        app.UseSwaggerUI(o => o.DocumentTitle = "AsyncOrmApi");
        app.MapGet("/", () => TypedResults.Redirect("/swagger")).ExcludeFromDescription();
        return app;
    }
}
