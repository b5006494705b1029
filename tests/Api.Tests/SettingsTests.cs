namespace AsyncOrmApi.Tests;

/// <summary>Typed settings are checked at start: a bad value stops the process with a message naming the setting and its rule.</summary>
public sealed class SettingsTests(ApiFactory api) : ApiTest(api)
{
    [Theory]
    [InlineData("ChangeFeed:Window", "0", "ChangeFeed:Window must be an integer from 1 to 10,000,000")]
    [InlineData("ChangeFeed:Window", "abc", "'abc' at 'ChangeFeed:Window'")]
    [InlineData("ChangeFeed:HeartbeatSeconds", "-1", "ChangeFeed:HeartbeatSeconds must be from 1")]
    [InlineData("ChangeFeed:Publication", "Robert'); DROP TABLE a;--", "ChangeFeed:Publication must be a PostgreSQL name")]
    [InlineData("Idempotency:Retention", "00:00:00", "Idempotency:Retention must be a TimeSpan")]
    [InlineData("RateLimit:WritesPerMinute", "-5", "RateLimit:WritesPerMinute must be 0 (off) or a positive integer")]
    [InlineData("RateLimit:ReadsPerMinute", "many", "'many' at 'RateLimit:ReadsPerMinute'")]
    [InlineData("Timeouts:RequestSeconds", "0", "Timeouts:RequestSeconds must be from 1")]
    [InlineData("Shutdown:TimeoutSeconds", "-1", "Shutdown:TimeoutSeconds must be from 0")]
    [InlineData("Streams:PerClient", "0", "Streams:PerClient must be from 1")]
    [InlineData("Reset:LockTimeoutSeconds", "0", "Reset:LockTimeoutSeconds must be from 0.1")]
    [InlineData("Seed:MaxCopiesWithKeyAside", "-1", "Seed:MaxCopiesWithKeyAside must be from 0 to 1,000,000")]
    [InlineData("Ingest:MaxBodyBytes", "0", "Ingest:MaxBodyBytes must be a positive number")]
    [InlineData("Ingest:StallSeconds", "0", "Ingest:StallSeconds must be from 1")]
    [InlineData("Ingest:MaxRowsWithKeyAside", "-1", "Ingest:MaxRowsWithKeyAside must be from 0 to 100,000,000")]
    [InlineData("Idempotency:Retention", "a day", "'a day' at 'Idempotency:Retention'")]
    public void A_bad_setting_stops_the_start_and_names_the_setting(string key, string value, string message)
    {
        var app = Api.With((key, value));
        var e = Assert.ThrowsAny<Exception>(() => app.CreateClient());
        // The binder's own words name the setting on the outer exception, the value's type on the inner one.
        var messages = new List<string>();
        for (Exception? x = e; x is not null; x = x.InnerException)
            messages.Add(x.Message);
        Assert.Contains(messages, m => m.Contains(message));
    }

    [Theory]
    [InlineData("ConnectionStrings__Default", null, "ConnectionStrings__Default")]
    [InlineData("RateLimit__WritesPerMinute", "-5", "RateLimit:WritesPerMinute must be 0 (off) or a positive integer")]
    [InlineData("ChangeFeed__Window", "abc", "'abc' at 'ChangeFeed:Window'")]
    [InlineData("ASPNETCORE_CONTENTROOT", "/nonexistent/api", "The content root /nonexistent/api/ does not exist: start the API in its own folder")]
    public async Task A_process_with_a_bad_setting_prints_one_line_naming_it_and_exits_with_1(string name, string? value, string message)
    {
        var settings = new List<(string, string?)> { (name, value) };
        if (name != "ConnectionStrings__Default")
            settings.Add(("ConnectionStrings__Default", Api.ConnectionString));
        var (exitCode, output, errors) = await ApiProcess.RunToExitAsync([.. settings]);
        Assert.Equal(1, exitCode);
        Assert.Equal("", output);
        var line = Assert.Single(errors.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("AsyncOrmApi did not start: ", line);
        Assert.Contains(message, line);
    }
}
