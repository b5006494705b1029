using System.ComponentModel.DataAnnotations;
using System.Net;
using Microsoft.AspNetCore.HttpOverrides;
using Microsoft.Extensions.Options;

namespace AsyncOrmApi.Http;

/// <summary>
/// Section <c>ForwardedHeaders</c>: the reverse proxies whose <c>X-Forwarded-For</c> and <c>X-Forwarded-Proto</c> the API
/// believes. Both lists are empty by default: nothing is trusted until a proxy is named, so a client that sends the header
/// itself buys no fresh rate-limit budget or stream slots.
/// </summary>
public sealed class ProxyOptions : IValidatableObject
{
    public const string Section = "ForwardedHeaders";

    /// <summary>Addresses of the proxies, such as <c>10.0.0.5</c> or <c>::1</c>.</summary>
    public List<string> KnownProxies { get; set; } = [];

    /// <summary>Networks the proxies are in, in CIDR notation, such as <c>10.0.0.0/8</c>.</summary>
    public List<string> KnownNetworks { get; set; } = [];

    public bool Any => KnownProxies.Count > 0 || KnownNetworks.Count > 0;

    public IEnumerable<ValidationResult> Validate(ValidationContext context)
    {
        foreach (var proxy in KnownProxies.Where(p => !IPAddress.TryParse(p, out _)))
            yield return new($"ForwardedHeaders:KnownProxies holds '{proxy}', which is not an IP address (such as 10.0.0.5).");
        foreach (var network in KnownNetworks.Where(n => !System.Net.IPNetwork.TryParse(n, out _)))
            yield return new($"ForwardedHeaders:KnownNetworks holds '{network}', which is not a network in CIDR notation (such as 10.0.0.0/8).");
    }
}

/// <summary>
/// ASP.NET Core's forwarded-headers middleware, with the proxies from <see cref="ProxyOptions"/> only. Not
/// ASPNETCORE_FORWARDEDHEADERS_ENABLED: it clears the known proxies and so believes every client.
/// </summary>
public static class Proxies
{
    public static WebApplicationBuilder AddProxies(this WebApplicationBuilder builder)
    {
        Limits.Typed<ProxyOptions>(builder.Services, ProxyOptions.Section);
        // One address, or several separated by commas, in one variable (ForwardedHeaders__KnownProxies=10.0.0.5,10.0.0.6)
        // as well as the indexed form (ForwardedHeaders__KnownProxies__0): the binder alone drops a plain value silently.
        builder.Services.AddOptions<ProxyOptions>().PostConfigure<IConfiguration>((o, config) =>
        {
            o.KnownProxies.AddRange(Listed(config, nameof(ProxyOptions.KnownProxies)));
            o.KnownNetworks.AddRange(Listed(config, nameof(ProxyOptions.KnownNetworks)));
        });
        builder.Services.AddOptions<ForwardedHeadersOptions>().Configure<IOptions<ProxyOptions>>((o, proxies) =>
        {
            o.ForwardedHeaders = ForwardedHeaders.XForwardedFor | ForwardedHeaders.XForwardedProto;
            // ASP.NET Core trusts loopback by default; here only what the settings name.
            o.KnownProxies.Clear();
            o.KnownIPNetworks.Clear();
            foreach (var proxy in proxies.Value.KnownProxies)
                o.KnownProxies.Add(IPAddress.Parse(proxy));
            foreach (var network in proxies.Value.KnownNetworks)
                o.KnownIPNetworks.Add(System.Net.IPNetwork.Parse(network));
            // A chain of named proxies is walked to its end; the first address that is not one is the client.
            o.ForwardLimit = null;
        });
        return builder;
    }

    static string[] Listed(IConfiguration config, string key) =>
        config[$"{ProxyOptions.Section}:{key}"]?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries) ?? [];

    /// <summary>First in the pipeline, so that the rate limits, the stream caps and the logs see the client's address.</summary>
    public static WebApplication UseProxies(this WebApplication app)
    {
        if (app.Services.GetRequiredService<IOptions<ProxyOptions>>().Value.Any)
            app.UseForwardedHeaders();
        return app;
    }
}
