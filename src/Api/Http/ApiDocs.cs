using Microsoft.OpenApi;

namespace AsyncOrmApi.Http;

/// <summary>The OpenAPI document (from the endpoints' own metadata) and Swagger UI.</summary>
public static class ApiDocs
{
    public static IServiceCollection AddApiDocs(this IServiceCollection services)
    {
        services.AddEndpointsApiExplorer();
        services.AddSwaggerGen(o => o.SwaggerDoc("v1", new OpenApiInfo
        {
            Title = "AsyncOrmApi",
            Version = "v1",
            Description = "SQLAlchemy's asyncio ORM example (async_orm.py) served over HTTP on EF Core and PostgreSQL: "
                + "reset the tables, seed the A/B graph, read it buffered or streamed, rename the first A.",
        }));
        return services;
    }

    public static WebApplication UseApiDocs(this WebApplication app)
    {
        app.UseSwagger();
        app.UseSwaggerUI(o => o.DocumentTitle = "AsyncOrmApi");
        app.MapGet("/", () => TypedResults.Redirect("/swagger")).ExcludeFromDescription();
        return app;
    }
}
