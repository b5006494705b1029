using System.Net;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>Outside Development, reset and seed take the admin key; without one configured they are off.</summary>
public sealed class AdminGuardTests(ApiFactory api) : ApiTest(api)
{
    const string Key = "s3cret-admin-key";

    WebApplicationFactory<Program> Production(string? key, LogCollector? logs = null) =>
        Api.WithWebHostBuilder(b =>
        {
            b.UseEnvironment("Staging");
            b.UseSetting("Admin:ApiKey", key ?? "");
            if (logs is not null)
                b.ConfigureServices(s => s.AddSingleton<ILoggerProvider>(logs));
        });

    [Theory]
    [InlineData("/reset")]
    [InlineData("/seed")]
    public async Task Without_the_key_nothing_changes(string path)
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        await using var app = Production(Key);
        var client = app.CreateClient();

        var missing = await ProblemAsync(await client.PostAsync(path, null), HttpStatusCode.Unauthorized);
        Assert.Contains("X-Api-Key", missing.GetProperty("detail").GetString());

        client.DefaultRequestHeaders.Add("X-Api-Key", Key + "x");
        await ProblemAsync(await client.PostAsync(path, null), HttpStatusCode.Forbidden);
        Assert.Equal(before, await Api.SnapshotAsync());
    }

    [Fact]
    public async Task With_the_key_reset_and_seed_work_and_reads_and_patch_need_none()
    {
        await using var app = Production(Key);
        var admin = app.CreateClient();
        admin.DefaultRequestHeaders.Add("X-Api-Key", Key);
        Assert.Equal(HttpStatusCode.NoContent, (await admin.PostAsync("/reset", null)).StatusCode);
        Assert.Equal(HttpStatusCode.Created, (await admin.PostAsync("/seed", null)).StatusCode);

        var anyone = app.CreateClient();
        var all = await anyone.GetAsync("/a");
        Assert.True(all.IsSuccessStatusCode, await all.Content.ReadAsStringAsync());
        Equivalent(SeedGraph(), await JsonArrayAsync(all));
        Assert.Equal(HttpStatusCode.OK, (await anyone.GetAsync("/a/first")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anyone.GetAsync("/a/stream")).StatusCode);
        var patch = await anyone.PatchAsync("/a/first", new StringContent("""{"data":"new data"}""", null, "application/json"));
        Assert.Equal(HttpStatusCode.OK, patch.StatusCode);
        Assert.Equal("new data", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));
    }

    [Fact]
    public async Task With_no_key_configured_they_are_off_and_start_up_says_how_to_turn_them_on()
    {
        await Api.SeedAsync();
        var before = await Api.SnapshotAsync();
        var logs = new LogCollector();
        await using var app = Production(null, logs);
        var client = app.CreateClient();
        client.DefaultRequestHeaders.Add("X-Api-Key", "");

        var problem = await ProblemAsync(await client.PostAsync("/reset", null), HttpStatusCode.Forbidden);
        Assert.Contains("Admin__ApiKey", problem.GetProperty("detail").GetString());
        await ProblemAsync(await client.PostAsync("/seed", null), HttpStatusCode.Forbidden);
        Assert.Equal(before, await Api.SnapshotAsync());
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/a")).StatusCode);
        Assert.Contains(logs.Messages, m => m.Level == LogLevel.Warning && m.Text.Contains("Admin__ApiKey"));
    }

    [Fact]
    public async Task Swagger_ui_can_send_the_key()
    {
        var doc = System.Text.Json.JsonDocument.Parse(await Client.GetStringAsync("/swagger/v1/swagger.json")).RootElement;
        var scheme = doc.GetProperty("components").GetProperty("securitySchemes").GetProperty("AdminKey");
        Assert.Equal("apiKey", scheme.GetProperty("type").GetString());
        Assert.Equal("header", scheme.GetProperty("in").GetString());
        Assert.Equal("X-Api-Key", scheme.GetProperty("name").GetString());
        foreach (var path in new[] { "/reset", "/seed", "/a" })
            Assert.True(doc.GetProperty("paths").GetProperty(path).GetProperty("post").GetProperty("security")[0].TryGetProperty("AdminKey", out _));
        // The open operations say so.
        Assert.Equal(0, doc.GetProperty("paths").GetProperty("/a").GetProperty("get").GetProperty("security").GetArrayLength());
    }

    public sealed class LogCollector : ILoggerProvider
    {
        public List<(LogLevel Level, string Text)> Messages { get; } = [];
        public ILogger CreateLogger(string category) => new Logger(this);
        public void Dispose() { }

        sealed class Logger(LogCollector owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel level) => true;
            public void Log<TState>(LogLevel level, EventId id, TState state, Exception? e, Func<TState, Exception?, string> format)
            {
                lock (owner.Messages)
                    owner.Messages.Add((level, format(state, e)));
            }
        }
    }
}
