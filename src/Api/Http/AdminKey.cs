using System.Security.Cryptography;
using System.Text;

namespace AsyncOrmApi.Http;

/// <summary>
/// Guards the destructive endpoints: open in Development (so Swagger UI's "Try it out" works), elsewhere
/// they need <c>X-Api-Key</c> equal to <c>Admin:ApiKey</c>, and with no key configured they are off.
/// </summary>
public static class AdminKey
{
    public const string Header = "X-Api-Key";
    public const string Setting = "Admin:ApiKey";

    /// <param name="operations">The guarded operations, as the start-up warning names them when they are off.</param>
    public static RouteGroupBuilder RequireAdminKey(this RouteGroupBuilder group, string operations)
    {
        var services = ((IEndpointRouteBuilder)group).ServiceProvider;
        var env = services.GetRequiredService<IHostEnvironment>();
        var key = services.GetRequiredService<IConfiguration>()[Setting];

        group.ProducesProblem(StatusCodes.Status401Unauthorized).ProducesProblem(StatusCodes.Status403Forbidden)
            .WithMetadata(new AdminKeyMetadata());
        // In every environment, Development above all: there the admin endpoints take no key, and a form on any web page
        // could post to a developer's localhost:8080 (a cross-site POST /reset wiped the tables; issue 16).
        group.AddEndpointFilter((context, next) => IsCrossSite(context.HttpContext.Request)
            ? ValueTask.FromResult<object?>(Problems.CrossSite())
            : next(context));
        if (env.IsDevelopment())
            return group;

        if (string.IsNullOrEmpty(key))
            services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(AdminKey)).LogWarning(
                "Admin operations off ({Operations}): no admin key is configured. Set {Setting} (environment variable "
                + "Admin__ApiKey) and send it in the {Header} header to turn them on.", operations, Setting, Header);

        // Hashing first makes the comparison take the same time whatever the length or content of the guess.
        var expected = string.IsNullOrEmpty(key) ? null : SHA256.HashData(Encoding.UTF8.GetBytes(key));
        return group.AddEndpointFilter((context, next) =>
        {
            var sent = context.HttpContext.Request.Headers[Header].ToString();
            if (expected is null)
                return ValueTask.FromResult<object?>(Problems.AdminOff());
            if (sent.Length == 0)
                return ValueTask.FromResult<object?>(Problems.AdminKeyMissing());
            if (!CryptographicOperations.FixedTimeEquals(expected, SHA256.HashData(Encoding.UTF8.GetBytes(sent))))
                return ValueTask.FromResult<object?>(Problems.AdminKeyWrong());
            return next(context);
        });
    }

    /// <summary>Whether the request carries the configured admin key (in any environment; false when none is configured).</summary>
    public static bool Holds(HttpContext http)
    {
        var key = http.RequestServices.GetRequiredService<IConfiguration>()[Setting];
        var sent = http.Request.Headers[Header].ToString();
        return !string.IsNullOrEmpty(key) && sent.Length > 0
            && CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(key)), SHA256.HashData(Encoding.UTF8.GetBytes(sent)));
    }

    /// <summary>
    /// A request a browser sent on behalf of another site: it says so (<c>Sec-Fetch-Site: cross-site</c>), or its
    /// <c>Origin</c> is not this server's own host (<c>null</c> included). Clients that are not browsers send neither.
    /// </summary>
    static bool IsCrossSite(HttpRequest request)
    {
        if (string.Equals(request.Headers["Sec-Fetch-Site"], "cross-site", StringComparison.OrdinalIgnoreCase))
            return true;
        var origin = request.Headers.Origin.ToString();
        return origin.Length > 0 && !(Uri.TryCreate(origin, UriKind.Absolute, out var uri)
            && string.Equals(uri.Authority, request.Host.Value, StringComparison.OrdinalIgnoreCase));
    }
}

/// <summary>Marks the operations that take the admin key, for the OpenAPI document.</summary>
public sealed class AdminKeyMetadata;
