using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using static AsyncOrmApi.Tests.Assertions;

namespace AsyncOrmApi.Tests;

/// <summary>The seed program's steps over HTTP, in its order, checked against the database.</summary>
public sealed class ScenarioTests(ApiFactory api) : ApiTest(api)
{
    [Fact]
    public async Task The_seed_scenario_runs_end_to_end()
    {
        // drop_all / create_all
        var reset = await Client.PostAsync("/reset", null);
        Assert.Equal(HttpStatusCode.NoContent, reset.StatusCode);
        Assert.Equal("a.data a.id b.a_id b.data b.id", await Api.ScalarAsync<string>(
            "SELECT string_agg(table_name || '.' || column_name, ' ' ORDER BY table_name, column_name) FROM information_schema.columns WHERE table_schema = 'public'"));

        // add_all
        var seed = await Client.PostAsync("/seed", null);
        Assert.Equal(HttpStatusCode.Created, seed.StatusCode);
        Assert.Equal("/a", seed.Headers.Location?.OriginalString);
        Assert.Equal("""{"a":3,"b":5}""", await seed.Content.ReadAsStringAsync());

        // execute(select(A).options(selectinload(A.bs)))
        var all = await JsonArrayAsync(await Client.GetAsync("/a"));
        Equivalent(SeedGraph(), all);

        // stream(stmt), both ways
        Equivalent(all, await JsonArrayAsync(await Client.GetAsync("/a/stream")));
        Equivalent(all, await NdJsonAsync(await GetNdJsonAsync("/a/stream")));

        // a1.data = "new data"; commit()
        var patch = await Client.PatchAsJsonAsync("/a/first", new { data = "new data" });
        Assert.Equal(HttpStatusCode.OK, patch.StatusCode);
        Assert.Equal("application/json", patch.Content.Headers.ContentType?.MediaType);
        Equivalent([SeedGraph(firstData: "new data")[0]], [(await patch.Content.ReadFromJsonAsync<ADto>())!]);
        Assert.Equal("new data", await Api.ScalarAsync<string>("SELECT data FROM a ORDER BY id LIMIT 1"));

        Equivalent(SeedGraph(firstData: "new data"), await JsonArrayAsync(await Client.GetAsync("/a")));
    }

    [Fact]
    public async Task Get_all_answers_an_empty_array_on_empty_tables()
    {
        Assert.Empty(await JsonArrayAsync(await Client.GetAsync("/a")));
        Assert.Empty(await JsonArrayAsync(await Client.GetAsync("/a/stream")));
        var ndjson = await GetNdJsonAsync("/a/stream");
        Assert.Empty(await NdJsonAsync(ndjson));
    }

    [Fact]
    public async Task Get_all_orders_a_by_id_and_each_bs_by_id()
    {
        // Rows inserted out of order: the answer must not depend on the physical order.
        await Api.ExecuteAsync("""
            INSERT INTO a (id, data) VALUES (20, 'x'), (10, 'y');
            INSERT INTO b (id, a_id, data) VALUES (7, 20, 'b7'), (3, 20, 'b3'), (5, 10, NULL), (9, NULL, 'orphan');
            """);
        var all = await JsonArrayAsync(await Client.GetAsync("/a"));
        Equivalent([new(10, "y", [new(5, 10, null)]), new(20, "x", [new(3, 20, "b3"), new(7, 20, "b7")])], all);
        Equivalent(all, await JsonArrayAsync(await Client.GetAsync("/a/stream")));
        Equivalent(all, await NdJsonAsync(await GetNdJsonAsync("/a/stream")));
    }

    [Fact]
    public async Task Get_first_answers_the_lowest_id_with_its_bs()
    {
        await Api.SeedAsync();
        await Api.ExecuteAsync("DELETE FROM b WHERE a_id = 1; DELETE FROM a WHERE id = 1");
        var first = await Client.GetAsync("/a/first");
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        Equivalent([SeedGraph()[1]], [(await first.Content.ReadFromJsonAsync<ADto>())!]);
    }

    [Fact]
    public async Task First_on_an_empty_table_is_a_404_problem_and_patch_adds_nothing()
    {
        var problem = await ProblemAsync(await Client.GetAsync("/a/first"), HttpStatusCode.NotFound);
        Assert.Contains("POST /seed", problem.GetProperty("detail").GetString());

        await ProblemAsync(await Client.PatchAsJsonAsync("/a/first", new { data = "x" }), HttpStatusCode.NotFound);
        Assert.Equal(0L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    [Fact]
    public async Task Patch_changes_one_column_of_one_row()
    {
        await Api.SeedAsync(2);
        var before = await Api.SnapshotAsync();
        var patch = await Client.PatchAsJsonAsync("/a/first", new { data = "renamed" });
        Assert.Equal(HttpStatusCode.OK, patch.StatusCode);
        Assert.Equal(before.Replace("a 1 'a1'", "a 1 'renamed'"), await Api.SnapshotAsync());
    }

    [Fact]
    public async Task Reset_drops_every_row_and_restarts_the_ids()
    {
        await Api.SeedAsync();
        Assert.Equal(HttpStatusCode.NoContent, (await Client.PostAsync("/reset", null)).StatusCode);
        Assert.Equal("\n--\n", await Api.SnapshotAsync());
        await Api.SeedAsync();
        Equivalent(SeedGraph(), await Api.GetAllAsync());
    }

    [Fact]
    public async Task Reset_keeps_the_seed_schema_exactly()
    {
        Assert.Equal(HttpStatusCode.NoContent, (await Client.PostAsync("/reset", null)).StatusCode);
        Assert.Equal("a.data:character varying:YES a.id:integer:NO b.a_id:integer:YES b.data:character varying:YES b.id:integer:NO",
            await Api.ScalarAsync<string>("""
                SELECT string_agg(table_name || '.' || column_name || ':' || data_type || ':' || is_nullable, ' ' ORDER BY table_name, column_name)
                FROM information_schema.columns WHERE table_schema = 'public'
                """));
        Assert.Equal("a b", await Api.ScalarAsync<string>(
            "SELECT string_agg(tablename, ' ' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"));
        Assert.Equal("b_a_id_fkey: FOREIGN KEY (a_id) REFERENCES a(id)", await Api.ScalarAsync<string>(ForeignKeys));
        Assert.Equal("a_id_seq b_id_seq", await Api.ScalarAsync<string>(
            "SELECT string_agg(sequencename, ' ' ORDER BY sequencename) FROM pg_sequences"));
    }

    [Fact]
    public async Task Seed_with_count_adds_that_many_graphs_in_id_order()
    {
        var seed = await Client.PostAsync("/seed?count=4", null);
        Assert.Equal(HttpStatusCode.Created, seed.StatusCode);
        Assert.Equal("""{"a":12,"b":20}""", await seed.Content.ReadAsStringAsync());
        Equivalent(SeedGraph(4), await Api.GetAllAsync());

        // The sequences moved on with the set-based insert: a plain seed continues after it.
        await Api.SeedAsync();
        Equivalent(SeedGraph(5), await Api.GetAllAsync());
    }

    [Fact]
    public async Task A_big_seed_is_complete_and_its_stream_equals_the_pages()
    {
        await Api.SeedAsync(2000);
        Assert.Equal("6000 10000 0", await Api.ScalarAsync<string>(
            "SELECT (SELECT count(*) FROM a) || ' ' || (SELECT count(*) FROM b) || ' ' || (SELECT count(*) FROM b WHERE a_id IS NULL)"));
        var all = new List<ADto>();
        for (var path = "/a"; path is not null; )
        {
            var page = await Client.GetAsync(path);
            all.AddRange(await JsonArrayAsync(page));
            path = page.Headers.TryGetValues("Link", out var link) ? link.Single().Split('<', '>')[1] : null;
        }
        Equivalent(SeedGraph(2000), all);
        Equivalent(all, await JsonArrayAsync(await Client.GetAsync("/a/stream")));
        Equivalent(all, await NdJsonAsync(await GetNdJsonAsync("/a/stream")));
    }

    const string ForeignKeys = "SELECT string_agg(conname || ': ' || pg_get_constraintdef(oid), '; ') FROM pg_constraint WHERE contype = 'f'";

    [Fact]
    public async Task A_bulk_seed_into_empty_tables_sets_the_foreign_key_aside_and_adds_it_back_checked()
    {
        var sql = await Api.CapturedSqlAsync(() => Api.SeedAsync(4));

        Assert.Contains(sql, s => s == "ALTER TABLE b DROP CONSTRAINT b_a_id_fkey");
        Assert.Contains(sql, s => s == "ALTER TABLE b ADD CONSTRAINT b_a_id_fkey FOREIGN KEY (a_id) REFERENCES a(id)");
        Assert.Equal("b_a_id_fkey: FOREIGN KEY (a_id) REFERENCES a(id)", await Api.ScalarAsync<string>(ForeignKeys));
        Assert.True(await Api.ScalarAsync<bool>(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'b_a_id_fkey'"), "the key is back, and checked");
        Equivalent(SeedGraph(4), await Api.GetAllAsync());
        // The key holds again: an orphan is refused.
        var orphan = await Assert.ThrowsAsync<Npgsql.PostgresException>(() => Api.ExecuteAsync("INSERT INTO b (a_id) VALUES (999)"));
        Assert.Equal(Npgsql.PostgresErrorCodes.ForeignKeyViolation, orphan.SqlState);
    }

    [Theory]
    [InlineData("0", 2)]
    [InlineData("3", 4)]
    public async Task A_bulk_seed_larger_than_the_setting_keeps_the_foreign_key_in_place(string maxCopies, int copies)
    {
        await using var app = Api.With(("Seed:MaxCopiesWithKeyAside", maxCopies));
        var client = app.CreateClient();
        var sql = await Api.CapturedSqlAsync(async () =>
            Assert.Equal(HttpStatusCode.Created, (await client.PostAsync($"/seed?count={copies}", null)).StatusCode));

        Assert.DoesNotContain(sql, s => s.StartsWith("ALTER TABLE") || s.Contains("LOCK TABLE"));
        Assert.Equal("b_a_id_fkey: FOREIGN KEY (a_id) REFERENCES a(id)", await Api.ScalarAsync<string>(ForeignKeys));
        Equivalent(SeedGraph(copies), await Api.GetAllAsync());
    }

    [Fact]
    public async Task A_bulk_seed_into_tables_with_rows_keeps_the_foreign_key_in_place()
    {
        await Api.SeedAsync();
        var sql = await Api.CapturedSqlAsync(() => Api.SeedAsync(4));

        Assert.DoesNotContain(sql, s => s.StartsWith("ALTER TABLE") || s.Contains("LOCK TABLE"));
        Assert.Equal("b_a_id_fkey: FOREIGN KEY (a_id) REFERENCES a(id)", await Api.ScalarAsync<string>(ForeignKeys));
        Equivalent(SeedGraph(5), await Api.GetAllAsync());
    }

    [Fact]
    public async Task A_bulk_seed_does_not_wait_for_tables_another_transaction_holds()
    {
        // A reader in the middle of its transaction (a stream, say) holds a: the seed must not queue for the table's lock
        // (every later read would queue behind it), but go in with the key in place, row by row.
        await using var reader = await Api.HoldTableAsync("a");

        var sql = await Api.CapturedSqlAsync(() => Api.SeedAsync(4));

        Assert.DoesNotContain(sql, s => s.StartsWith("ALTER TABLE"));
        Assert.Equal("b_a_id_fkey: FOREIGN KEY (a_id) REFERENCES a(id)", await Api.ScalarAsync<string>(ForeignKeys));
        await reader.ReleaseAsync();
        Equivalent(SeedGraph(4), await Api.GetAllAsync());
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    [InlineData("1000001")]
    [InlineData("abc")]
    [InlineData("1.5")]
    [InlineData("99999999999")]
    public async Task Seed_rejects_a_bad_count_and_adds_nothing(string count)
    {
        var problem = await ProblemAsync(await Client.PostAsync($"/seed?count={count}", null), HttpStatusCode.BadRequest);
        Assert.Contains("count", problem.GetProperty("detail").GetString());
        Assert.Equal(0L, await Api.ScalarAsync<long>("SELECT count(*) FROM a"));
    }

    Task<HttpResponseMessage> GetNdJsonAsync(string path)
    {
        var request = new HttpRequestMessage(HttpMethod.Get, path);
        request.Headers.Accept.ParseAdd("application/x-ndjson");
        return Client.SendAsync(request);
    }
}
