// GET /a the way a hand-written data layer would serve it: selectinload's two statements on a
// prepared-statement-caching Npgsql data source, JSON written straight to the response.
using System.Text.Json;
using Npgsql;

var builder = WebApplication.CreateBuilder(args);
var connection = new NpgsqlConnectionStringBuilder(builder.Configuration.GetConnectionString("Default")) { MaxAutoPrepare = 20 };
var dataSource = NpgsqlDataSource.Create(connection);

var app = builder.Build();

app.MapGet("/a", async (HttpContext http) =>
{
    var ids = new List<int>();
    var data = new List<string?>();
    var bs = new Dictionary<int, List<(int Id, string? Data)>>();
    await using (var conn = await dataSource.OpenConnectionAsync(http.RequestAborted))
    {
        await using (var cmd = new NpgsqlCommand("SELECT a.id, a.data FROM a ORDER BY a.id", conn))
        await using (var reader = await cmd.ExecuteReaderAsync(http.RequestAborted))
            while (await reader.ReadAsync(http.RequestAborted))
            {
                ids.Add(reader.GetInt32(0));
                data.Add(reader.IsDBNull(1) ? null : reader.GetString(1));
            }

        await using (var cmd = new NpgsqlCommand("SELECT b.a_id, b.id, b.data FROM b WHERE b.a_id = ANY($1) ORDER BY b.id", conn))
        {
            cmd.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = ids.ToArray() });
            await using var reader = await cmd.ExecuteReaderAsync(http.RequestAborted);
            while (await reader.ReadAsync(http.RequestAborted))
            {
                var aId = reader.GetInt32(0);
                if (!bs.TryGetValue(aId, out var list))
                    bs[aId] = list = [];
                list.Add((reader.GetInt32(1), reader.IsDBNull(2) ? null : reader.GetString(2)));
            }
        }
    }

    http.Response.ContentType = "application/json; charset=utf-8";
    await using var json = new Utf8JsonWriter(http.Response.BodyWriter);
    json.WriteStartArray();
    for (var i = 0; i < ids.Count; i++)
    {
        json.WriteStartObject();
        json.WriteNumber("id"u8, ids[i]);
        json.WriteString("data"u8, data[i]);
        json.WriteStartArray("bs"u8);
        foreach (var b in bs.GetValueOrDefault(ids[i]) ?? [])
        {
            json.WriteStartObject();
            json.WriteNumber("id"u8, b.Id);
            json.WriteNumber("aId"u8, ids[i]);
            json.WriteString("data"u8, b.Data);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }
    json.WriteEndArray();
    await json.FlushAsync(http.RequestAborted);
});

app.Run();
