using System.Diagnostics;
using System.Text.RegularExpressions;
using AsyncOrmApi.Http;
using YamlDotNet.RepresentationModel;

namespace AsyncOrmApi.Tests;

/// <summary>
/// What can be checked of the container files without a Docker engine: their shape, and that they agree
/// with each other and with the settings the app reads, so they cannot drift apart unseen.
/// </summary>
public sealed class DeliveryTests
{
    /// <summary>The repository's root folder, where AsyncOrmApi.sln is.</summary>
    internal static readonly string Root = FindRoot();

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "AsyncOrmApi.sln")))
                return dir.FullName;
        throw new InvalidOperationException("AsyncOrmApi.sln not found above " + AppContext.BaseDirectory);
    }

    static string Read(string path) => File.ReadAllText(Path.Combine(Root, path));

    static YamlMappingNode Yaml(string path)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(Read(path)));
        return (YamlMappingNode)stream.Documents[0].RootNode;
    }

    static YamlMappingNode Map(YamlNode node, string key) => (YamlMappingNode)((YamlMappingNode)node)[key];
    static YamlSequenceNode List(YamlNode node, string key) => (YamlSequenceNode)((YamlMappingNode)node)[key];
    static string Scalar(YamlNode node, string key) => ((YamlScalarNode)((YamlMappingNode)node)[key]).Value!;
    static bool Has(YamlNode node, string key) => ((YamlMappingNode)node).Children.ContainsKey(key);

    [Fact]
    public void Dockerfile_builds_on_the_sdk_runs_on_aspnet_as_non_root_on_8080_with_a_liveness_check()
    {
        var dockerfile = Read("Dockerfile");
        var froms = Regex.Matches(dockerfile, @"^FROM\s+(\S+)", RegexOptions.Multiline).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(["mcr.microsoft.com/dotnet/sdk:10.0", "mcr.microsoft.com/dotnet/aspnet:10.0"], froms);
        Assert.Matches(@"(?m)^USER \$APP_UID$", dockerfile);
        Assert.Matches(@"(?m)^EXPOSE 8080$", dockerfile);
        Assert.Matches(@"(?m)^ENV ASPNETCORE_HTTP_PORTS=8080$", dockerfile);
        Assert.Matches(@"(?m)^HEALTHCHECK (.*\\\n)*.*CMD .*/health/live", dockerfile);
        Assert.Matches(@"(?m)^ENTRYPOINT \[""dotnet"", ""AsyncOrmApi.dll""\]$", dockerfile);

        // Restore comes before the sources are copied, so its layer survives source changes.
        Assert.True(dockerfile.IndexOf("RUN dotnet restore", StringComparison.Ordinal) < dockerfile.IndexOf("COPY src/Api/ ", StringComparison.Ordinal));
        foreach (Match copy in Regex.Matches(dockerfile, @"^COPY (?!--from)(.+) \S+$", RegexOptions.Multiline))
            foreach (var source in copy.Groups[1].Value.Split(' '))
                Assert.True(File.Exists(Path.Combine(Root, source)) || Directory.Exists(Path.Combine(Root, source)), $"COPY source {source} exists");

        var ignore = Read(".dockerignore");
        foreach (var kept in new[] { "**/bin/", "**/obj/", ".pg/", ".git/" })
            Assert.Contains(kept, ignore.Split('\n'));
    }

    [Fact]
    public async Task The_dockerfile_publish_step_publishes_here()
    {
        var publish = Regex.Match(Read("Dockerfile"), @"^RUN (dotnet publish (\S+) -c Release) -o /app --no-restore$", RegexOptions.Multiline);
        Assert.True(publish.Success, "the Dockerfile publishes with dotnet publish PROJECT -c Release -o /app");
        var output = Directory.CreateTempSubdirectory("asyncormapi-publish-");
        try
        {
            var args = $"publish {publish.Groups[2].Value} -c Release -o {output.FullName} --nologo -v q";
            using var process = Process.Start(new ProcessStartInfo("dotnet", args)
            {
                WorkingDirectory = Root, RedirectStandardOutput = true, RedirectStandardError = true,
            })!;
            var log = await process.StandardOutput.ReadToEndAsync() + await process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            Assert.True(process.ExitCode == 0, log);
            Assert.True(File.Exists(Path.Combine(output.FullName, "AsyncOrmApi.dll")), "the ENTRYPOINT's dll is published");
            Assert.True(File.Exists(Path.Combine(output.FullName, "appsettings.json")));
        }
        finally
        {
            output.Delete(recursive: true);
        }
    }

    [Fact]
    public void Compose_runs_the_api_from_the_dockerfile_on_a_healthy_pinned_postgres()
    {
        var services = Map(Yaml("docker-compose.yml"), "services");
        var db = services["db"];
        Assert.Matches(@"^postgres:\d+\.\d+", Scalar(db, "image"));
        var healthcheck = string.Join(' ', List(Map(db, "healthcheck"), "test").Children.Select(c => c.ToString()));
        Assert.Contains("pg_isready", healthcheck);
        var volume = List(db, "volumes").Children[0].ToString().Split(':')[0];
        Assert.True(Has(Yaml("docker-compose.yml")["volumes"], volume), $"volume {volume} is a named volume");

        var api = services["api"];
        Assert.Equal(".", Scalar(api, "build"));
        Assert.Equal("service_healthy", Scalar(Map(Map(api, "depends_on"), "db"), "condition"));
        // Development (the default) takes reset and seed without a key: published on the host's loopback only.
        Assert.Contains("${API_ADDRESS:-127.0.0.1}:8080:8080", List(api, "ports").Children.Select(c => c.ToString()));

        // The settings the app reads, under their environment names, pointing at the db service's database.
        var env = Map(api, "environment");
        var dbEnv = Map(db, "environment");
        var cs = new Npgsql.NpgsqlConnectionStringBuilder(Scalar(env, "ConnectionStrings__Default"));
        Assert.Equal("db", cs.Host);
        Assert.Equal(Scalar(dbEnv, "POSTGRES_DB"), cs.Database);
        Assert.Equal(Scalar(dbEnv, "POSTGRES_USER"), cs.Username);
        Assert.Equal(Scalar(dbEnv, "POSTGRES_PASSWORD"), cs.Password);
        Assert.Matches(@"^\$\{ADMIN_API_KEY", Scalar(env, AdminKey.Setting.Replace(":", "__")));
    }

    /// <summary>
    /// Only what a newcomer should see sits at the root: stray files (such as the "0", "32.8" and "33.9" a shell
    /// comparison once wrote as redirections) fail here, tracked or not, unless .gitignore names them.
    /// </summary>
    [Fact]
    public void The_repository_root_holds_only_what_a_newcomer_should_see()
    {
        string[] expected =
        [
            ".ci", ".dockerignore", ".editorconfig", ".github", ".gitignore", "AsyncOrmApi.sln", "Directory.Build.props",
            "Directory.Packages.props", "Dockerfile", "LICENSE", "README.md", "bench", "docker-compose.yml", "docs", "script", "src", "tests",
        ];
        var git = Process.Start(new ProcessStartInfo("git", ["ls-files", "--cached", "--others", "--exclude-standard"])
            { WorkingDirectory = Root, RedirectStandardOutput = true })!;
        var files = git.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        git.WaitForExit();
        Assert.Equal(0, git.ExitCode);
        Assert.Equal(expected, files.Select(f => f.Split('/')[0]).Distinct().Order(StringComparer.Ordinal));
    }

    [Fact]
    public void The_observability_profile_adds_a_dashboard_that_the_api_exports_to()
    {
        var services = Map(Yaml("docker-compose.yml"), "services");
        var dashboard = services["dashboard"];
        Assert.Equal(["observability"], List(dashboard, "profiles").Children.Select(c => c.ToString()));
        Assert.Matches(@"^mcr\.microsoft\.com/dotnet/aspire-dashboard:\d+\.\d+$", Scalar(dashboard, "image"));
        Assert.Contains("127.0.0.1:18888:18888", List(dashboard, "ports").Children.Select(c => c.ToString()));
        Assert.False(Has(services["api"], "profiles"), "the API runs without the profile too");
        Assert.False(Has(services["db"], "profiles"), "PostgreSQL runs without the profile too");

        // The OTLP endpoint the API exports to is the dashboard's gRPC receiver (18889), by the service's name.
        var env = Map(services["api"], "environment");
        Assert.Matches(@"^\$\{OTEL_EXPORTER_OTLP_ENDPOINT-http://dashboard:18889\}$", Scalar(env, "OTEL_EXPORTER_OTLP_ENDPOINT"));
        Assert.Equal(Telemetry.DefaultServiceName, Scalar(env, "OTEL_SERVICE_NAME"));
    }

    [Fact]
    public void The_workflow_runs_script_test_with_a_docker_engine_and_on_debian_fails_on_vulnerable_packages_and_builds_the_image()
    {
        var workflow = Yaml(".github/workflows/ci.yml");
        var on = Map(workflow, "on");
        Assert.True(Has(on, "push") && Has(on, "pull_request"));
        var jobs = Map(workflow, "jobs");

        // On the runner itself, whose Docker engine the tests' Testcontainers path uses; and in Debian 12 as root, where
        // script/test starts local clusters and the pg_auto_failover formation.
        var test = Map(jobs, "test");
        Assert.False(Has(test, "container"), "the test job runs on the runner, where a Docker engine answers");
        Assert.Contains(List(test, "steps").Children, s => Has(s, "run") && Scalar(s, "run") == $"docker pull {ApiFactory.Image}");
        var formation = Map(jobs, "formation");
        Assert.Equal("debian:12", Scalar(formation, "container"));
        foreach (var job in new[] { test, formation })
        {
            var steps = List(job, "steps").Children;
            Assert.Contains(steps, s => Has(s, "run") && Scalar(s, "run") == "script/test");
            Assert.Contains(steps, s => Has(s, "uses") && Scalar(s, "uses").StartsWith("actions/setup-dotnet@")
                && Scalar(Map(s, "with"), "dotnet-version").StartsWith("10."));
        }
        var audit = string.Join('\n', List(Map(jobs, "audit"), "steps").Children.Where(s => Has(s, "run")).Select(s => Scalar(s, "run")));
        Assert.Contains("dotnet list AsyncOrmApi.sln package --vulnerable --include-transitive", audit);

        var imageSteps = List(Map(jobs, "image"), "steps").Children;
        Assert.Contains(imageSteps, s => Has(s, "uses") && Scalar(s, "uses").StartsWith("docker/build-push-action@"));

        foreach (var step in jobs.Children.Values.SelectMany(j => List(j, "steps").Children).Where(s => Has(s, "uses")))
            Assert.Matches(@"^[\w-]+/[\w-]+@v\d+$", Scalar(step, "uses"));

        // Dependabot keeps the NuGet packages and the actions current.
        var updates = List(Yaml(".github/dependabot.yml"), "updates").Children;
        Assert.Contains(updates, u => Scalar(u, "package-ecosystem") == "nuget");
        Assert.Contains(updates, u => Scalar(u, "package-ecosystem") == "github-actions");
    }

    /// <summary>
    /// No resolved package lies inside GHSA-v5pm-xwqc-g5wc (Microsoft.OpenApi below 2.7.5, or 3.x below 3.5.4): NuGet's audit
    /// fails such a restore on nuget.org, while a feed without vulnerability data (these machines') lets it pass unseen.
    /// </summary>
    [Theory]
    [InlineData("src/Api")]
    [InlineData("tests/Api.Tests")]
    public void No_resolved_package_is_inside_the_advisory_of_microsoft_openapi(string project)
    {
        using var assets = System.Text.Json.JsonDocument.Parse(Read(Path.Combine(project, "obj", "project.assets.json")));
        var openApi = assets.RootElement.GetProperty("libraries").EnumerateObject()
            .Select(l => l.Name.Split('/'))
            .Where(l => l[0].Equals("Microsoft.OpenApi", StringComparison.OrdinalIgnoreCase))
            .Select(l => Version.Parse(l[1].Split('-')[0]))
            .ToList();
        Assert.NotEmpty(openApi);
        Assert.All(openApi, v => Assert.False(v < new Version(2, 7, 5) || v.Major == 3 && v < new Version(3, 5, 4),
            $"Microsoft.OpenApi {v} lies inside GHSA-v5pm-xwqc-g5wc (fixed in 2.7.5 and 3.5.4)"));
    }

    [Fact]
    public void The_readme_shows_the_docker_commands_the_files_support()
    {
        var readme = Read("README.md");
        Assert.Contains("## Run with Docker", readme);
        Assert.Contains("docker compose up --build", readme);
        Assert.Contains("ADMIN_API_KEY", readme);
        Assert.Contains("docker build -t asyncormapi .", readme);
    }
}
