using System.Buffers;
using System.Text.Encodings.Web;
using System.Text.Json;
using Npgsql.Replication;
using Npgsql.Replication.PgOutput;
using Npgsql.Replication.PgOutput.Messages;

namespace AsyncOrmApi.Changes;

/// <summary>
/// Turns pgoutput's messages into events: a transaction's changes are gathered and appended at its commit, with ids
/// from its commit LSN. pgoutput recycles its message objects: everything is copied out before the next one.
/// </summary>
sealed class ChangeDecoder(ChangeLog changes, Dictionary<string, uint> tables, int window, long windowBytes)
{
    /// <summary>An event is its row's UTF-8 size: only the escapes JSON requires.</summary>
    static readonly JsonWriterOptions Json = new() { Encoder = MinimalJsonEncoder.Instance, SkipValidation = true };

    readonly List<Change> _pending = [];
    readonly ArrayBufferWriter<byte> _buffer = new(256);
    ulong _commitLsn;
    uint _xid;
    int _ordinal;
    long _pendingBytes;
    bool _tooLarge;

    public async ValueTask DecodeAsync(ReplicationMessage message, CancellationToken ct)
    {
        switch (message)
        {
            case BeginMessage begin:
                _commitLsn = (ulong)begin.TransactionFinalLsn;
                _xid = begin.TransactionXid;
                _ordinal = 0;
                _tooLarge = false;
                _pending.Clear();
                _pendingBytes = 0;
                break;
            case RelationMessage relation when Table(relation) is { } table:
                // A new OID for a or b: the table was dropped and created again (the seed program's drop_all/create_all).
                if (tables.TryGetValue(table, out var known) && known != relation.RelationId)
                    Reset("recreated");
                tables[table] = relation.RelationId;
                break;
            case InsertMessage insert when Table(insert.Relation) is { } table:
                await AddAsync(table + ".insert", insert.NewRow, ct);
                break;
            case UpdateMessage update when Table(update.Relation) is { } table:
                await AddAsync(table + ".update", update.NewRow, ct);
                break;
            case KeyDeleteMessage delete when Table(delete.Relation) is { } table:
                await AddAsync(table + ".delete", delete.Key, ct);
                break;
            case FullDeleteMessage delete when Table(delete.Relation) is { } table:
                await AddAsync(table + ".delete", delete.OldRow, ct);
                break;
            case TruncateMessage truncate when truncate.Relations.Any(r => Table(r) is not null):
                Reset("truncated");
                break;
            case LogicalDecodingMessage { Prefix: ChangeFeed.ResetMessage }:
                tables.Clear();                            // the next OIDs of a and b are the new tables', not a second reset
                Reset("reset");
                break;
            case CommitMessage:
                if (_tooLarge || _pendingBytes > windowBytes)
                {
                    _pending.Clear();
                    Reset("large-transaction");
                }
                changes.Append(_pending);
                _pending.Clear();
                _pendingBytes = 0;
                break;
        }
    }

    static string? Table(RelationMessage relation) =>
        relation is { Namespace: "public", RelationName: "a" or "b" } ? relation.RelationName : null;

    void Reset(string reason)
    {
        _buffer.ResetWrittenCount();
        using (var json = new Utf8JsonWriter(_buffer, Json))
        {
            json.WriteStartObject();
            json.WriteString("reason", reason);
            json.WriteEndObject();
        }
        Add("reset");
    }

    /// <summary>The row as the API shows it: <c>{"id","data"}</c> for A, <c>{"id","aId","data"}</c> for B.</summary>
    async ValueTask AddAsync(string type, ReplicationTuple row, CancellationToken ct)
    {
        if (_tooLarge || _pending.Count >= window || _pendingBytes > windowBytes)
        {
            // More changes than the window keeps, by count or by bytes: no subscriber could resume inside it, and
            // holding it would hold its size in memory. It goes out as one `reset`.
            _tooLarge = true;
            _ordinal++;
            return;
        }
        _buffer.ResetWrittenCount();
        using (var json = new Utf8JsonWriter(_buffer, Json))
        {
            json.WriteStartObject();
            await foreach (var value in row)
            {
                var name = value.GetFieldName();
                if (value.IsUnchangedToastedValue)
                    continue;                              // an update that left a large data value as it was
                var field = name switch { "id" => "id", "a_id" => "aId", "data" => "data", _ => null };
                if (field is null || value.IsDBNull && type.EndsWith(".delete"))
                    continue;                              // a delete's key carries only the id
                if (value.IsDBNull)
                    json.WriteNull(field);
                else if (field == "data")
                    json.WriteString(field, await value.Get<string>(ct));
                else
                    json.WriteNumber(field, await value.Get<int>(ct));
            }
            json.WriteEndObject();
        }
        Add(type);
    }

    void Add(string type)
    {
        var id = new ChangeId(changes.Source, _commitLsn, ++_ordinal);
        var change = Change.Of(id, _xid, type, _buffer.WrittenSpan);
        _pendingBytes += change.Frame.Length;
        _pending.Add(change);
    }
}
