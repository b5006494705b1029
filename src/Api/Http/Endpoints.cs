using Microsoft.AspNetCore.Diagnostics;

namespace AsyncOrmApi.Http;

public static class Endpoints
{
    /// <summary>The request's endpoint, also once the exception handler has cleared it (its feature keeps it).</summary>
    public static Endpoint? Of(HttpContext http) =>
        http.GetEndpoint() ?? http.Features.Get<IExceptionHandlerFeature>()?.Endpoint;
}
