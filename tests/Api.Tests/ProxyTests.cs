using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;

namespace AsyncOrmApi.Tests;

/// <summary>Behind a real reverse proxy (nginx from Debian's packages, which script/test installs), on 127.0.0.1.</summary>
public sealed class ProxyTests(ApiFactory api) : ApiTest(api)
{
    [ProxyFact]
    public async Task Behind_a_named_proxy_each_client_has_its_own_budget_and_a_forged_header_buys_none()
    {
        await Api.SeedAsync();
        await using var app = Api.OnKestrel(("ForwardedHeaders:KnownProxies", "127.0.0.1"), ("RateLimit:WritesPerMinute", "2"));
        await using var nginx = await Nginx.StartAsync(ApiFactory.AddressOf(app));
        // Not across a minute's end, where every budget comes back.
        var untilMinute = 60_000 - DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() % 60_000;
        if (untilMinute < 15_000)
            await Task.Delay(TimeSpan.FromMilliseconds(untilMinute + 100));

        // Two clients behind the proxy (on Linux all of 127.0.0.0/8 is loopback): two budgets of 2 writes.
        foreach (var address in new[] { "127.0.0.5", "127.0.0.6" })
        {
            using var client = ApiFactory.ClientFrom(nginx.Address, address);
            Assert.Equal(new[] { 200, 200, 429 }, await PatchesAsync(client, 3));
        }

        // A forged X-Forwarded-For through the proxy: the proxy adds the real address, the API takes that one.
        using (var forging = ApiFactory.ClientFrom(nginx.Address, "127.0.0.5"))
            Assert.Equal(new[] { 429 }, await PatchesAsync(forging, 1, forwardedFor: "10.9.9.9"));

        // Straight to the API from an address that is not the proxy: the header is not believed, whatever it says.
        using var direct = ApiFactory.ClientFrom(app, "127.0.0.7");
        Assert.Equal(new[] { 200, 200, 429, 429 }, await PatchesAsync(direct, 4, forwardedFor: "10.0.0."));
    }

    [Fact]
    public async Task Without_named_proxies_no_forwarded_header_is_believed()
    {
        await Api.SeedAsync();
        await using var app = Api.OnKestrel(("RateLimit:WritesPerMinute", "2"));
        var untilMinute = 60_000 - DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() % 60_000;
        if (untilMinute < 10_000)
            await Task.Delay(TimeSpan.FromMilliseconds(untilMinute + 100));
        // From 127.0.0.1 itself, which ASP.NET Core's own defaults would trust.
        using var client = ApiFactory.ClientFrom(app, "127.0.0.1");
        Assert.Equal(new[] { 200, 200, 429 }, await PatchesAsync(client, 3, forwardedFor: "10.0.0."));
    }

    /// <summary>The statuses of <paramref name="count"/> PATCH /a/first; with a different X-Forwarded-For each when given.</summary>
    static async Task<int[]> PatchesAsync(HttpClient client, int count, string? forwardedFor = null)
    {
        var statuses = new List<int>();
        for (var i = 0; i < count; i++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Patch, "/a/first") { Content = JsonContent.Create(new { data = $"w{i}" }) };
            if (forwardedFor is not null)
                request.Headers.TryAddWithoutValidation("X-Forwarded-For", forwardedFor.EndsWith('.') ? forwardedFor + i : forwardedFor);
            using var response = await client.SendAsync(request);
            statuses.Add((int)response.StatusCode);
        }
        return [.. statuses];
    }
}

/// <summary>nginx in front of one API, in a folder of its own: the configuration docs/deploy.md gives, on 127.0.0.1.</summary>
public sealed class Nginx : IAsyncDisposable
{
    public static string? Binary => new[] { "/usr/sbin/nginx", "/usr/bin/nginx" }.FirstOrDefault(File.Exists);

    readonly Process _process;
    readonly string _folder;

    Nginx(Process process, string folder, Uri address)
    {
        _process = process;
        _folder = folder;
        Address = address;
    }

    public Uri Address { get; }

    public static async Task<Nginx> StartAsync(Uri api)
    {
        var folder = Directory.CreateTempSubdirectory("asyncormapi-nginx-").FullName;
        var port = ApiFactory.FreePort();
        File.WriteAllText(Path.Combine(folder, "nginx.conf"), $$"""
            daemon off;
            master_process off;
            pid {{folder}}/nginx.pid;
            error_log {{folder}}/error.log;
            events {}
            http {
                access_log off;
                client_body_temp_path {{folder}}/body;
                proxy_temp_path {{folder}}/proxy;
                fastcgi_temp_path {{folder}}/fastcgi;
                uwsgi_temp_path {{folder}}/uwsgi;
                scgi_temp_path {{folder}}/scgi;
                server {
                    listen 127.0.0.1:{{port}};
                    location / {
                        proxy_pass http://127.0.0.1:{{api.Port}};
                        proxy_http_version 1.1;
                        proxy_set_header Host $host;
                        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                        proxy_set_header X-Forwarded-Proto $scheme;
                        proxy_buffering off;
                    }
                }
            }
            """);
        var start = new ProcessStartInfo(Binary!, ["-p", folder, "-c", Path.Combine(folder, "nginx.conf"), "-e", Path.Combine(folder, "error.log")])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        var nginx = new Nginx(Process.Start(start)!, folder, new Uri($"http://127.0.0.1:{port}"));
        for (var i = 0; i < 100; i++)
        {
            try
            {
                using var probe = new TcpClient();
                await probe.ConnectAsync(IPAddress.Loopback, port);
                return nginx;
            }
            catch (SocketException) when (!nginx._process.HasExited)
            {
                await Task.Delay(100);
            }
        }
        var log = File.Exists(Path.Combine(folder, "error.log")) ? File.ReadAllText(Path.Combine(folder, "error.log")) : "";
        await nginx.DisposeAsync();
        throw new InvalidOperationException($"nginx did not start: {log}");
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
        Directory.Delete(_folder, recursive: true);
    }
}

/// <summary>A test that needs nginx: skipped, with the reason, where it is not installed (script/test installs it as root).</summary>
public sealed class ProxyFactAttribute : FactAttribute
{
    public ProxyFactAttribute() => Skip = Nginx.Binary is null
        ? "nginx is not installed: script/test installs it (apt-get install -y nginx-light) when run as root."
        : null;
}
