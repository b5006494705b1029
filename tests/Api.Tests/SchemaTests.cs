using System.Net;
using System.Net.Http.Json;
using Microsoft.AspNetCore.Hosting;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>The API and the seed program share one database: each works on the other's tables.</summary>
public sealed class SchemaTests(ApiFactory api) : ApiTest(api)
{
    // What SQLAlchemy's create_all emits for the seed's model, and the rows its add_all leaves.
    const string SeedProgramSchema = """
        CREATE TABLE a (id SERIAL NOT NULL, data VARCHAR, PRIMARY KEY (id));
        CREATE TABLE b (id SERIAL NOT NULL, a_id INTEGER, data VARCHAR, PRIMARY KEY (id), FOREIGN KEY(a_id) REFERENCES a (id));
        INSERT INTO a (data) VALUES ('a1'), ('a2'), ('a3');
        INSERT INTO b (a_id) VALUES (1), (1), (2), (3), (3);
        """;

    [Fact]
    public async Task A_brand_new_database_gets_the_tables_at_start_up()
    {
        var cs = await Api.CreateDatabaseAsync("asyncormapi_new_" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            await using var app = Api.WithWebHostBuilder(b => b.UseSetting("ConnectionStrings:Default", cs));
            var response = await app.CreateClient().GetAsync("/a");
            Assert.Empty(await JsonArrayAsync(response));
        }
        finally
        {
            await Api.DropDatabaseAsync(cs);
        }
    }

    [Fact]
    public async Task The_api_serves_a_database_the_seed_program_created_and_drops_nothing()
    {
        var cs = await Api.CreateDatabaseAsync("asyncormapi_seeded_" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            await using (var conn = new Npgsql.NpgsqlConnection(cs))
            {
                await conn.OpenAsync();
                await new Npgsql.NpgsqlCommand(SeedProgramSchema, conn).ExecuteNonQueryAsync();
            }
            await using var app = Api.WithWebHostBuilder(b => b.UseSetting("ConnectionStrings:Default", cs));
            var client = app.CreateClient();

            Equivalent(SeedGraph(), await JsonArrayAsync(await client.GetAsync("/a")));
            Assert.Equal(HttpStatusCode.OK, (await client.PatchAsJsonAsync("/a/first", new { data = "new data" })).StatusCode);
            Assert.Equal(HttpStatusCode.Created, (await client.PostAsync("/seed", null)).StatusCode);
            var all = await JsonArrayAsync(await client.GetAsync("/a"));
            Equivalent(SeedGraph(2, firstData: "new data"), all);
        }
        finally
        {
            await Api.DropDatabaseAsync(cs);
        }
    }

    [Fact]
    public async Task Start_up_keeps_existing_rows()
    {
        await Api.SeedAsync();
        await using var restarted = Api.WithWebHostBuilder(_ => { });
        Equivalent(SeedGraph(), await JsonArrayAsync(await restarted.CreateClient().GetAsync("/a")));
    }
}
