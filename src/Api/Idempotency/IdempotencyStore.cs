using AsyncOrmApi.Data;
using AsyncOrmApi.Http;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using Npgsql;
using NpgsqlTypes;

namespace AsyncOrmApi.Idempotency;

/// <summary>
/// The keys and their answers, in the API's own schema (never <c>public</c>, which holds the seed's tables only), written
/// in the transaction of the write they answer: they commit together, replicate together to a synchronous standby, or
/// vanish together (a transactional outbox's rule).
/// </summary>
public static class IdempotencyStore
{
    public const string Schema = "asyncormapi";
    public const string Table = Schema + ".idempotency_keys";

    /// <summary>Creates the schema and table when missing (at start-up, beside the seed's tables).</summary>
    /// <remarks>
    /// CREATE SCHEMA IF NOT EXISTS asks for CREATE on the database even when the schema is there: a role that is not a
    /// superuser, whose schema an administrator created (script/sql/grant.sql), was refused. The block asks only when the
    /// schema is missing.
    /// </remarks>
    public static readonly string CreateSql = $$"""
        DO $$ BEGIN
            IF to_regnamespace('{{Schema}}') IS NULL THEN CREATE SCHEMA {{Schema}}; END IF;
        END $$;
        CREATE TABLE IF NOT EXISTS {{Table}} (
            caller varchar(64) NOT NULL DEFAULT '',
            key varchar({{IdempotencyKey.MaxLength}}) NOT NULL,
            fingerprint bytea NOT NULL,
            status smallint NOT NULL,
            headers text[] NOT NULL,
            body bytea NOT NULL,
            created_at timestamptz NOT NULL,
            PRIMARY KEY (caller, key)
        );
        -- A table from before keys had callers: the column, and the key made (caller, key).
        ALTER TABLE {{Table}} ADD COLUMN IF NOT EXISTS caller varchar(64) NOT NULL DEFAULT '';
        DO $$ BEGIN
            IF (SELECT indnatts FROM pg_index WHERE indrelid = '{{Table}}'::regclass AND indisprimary) = 1 THEN
                ALTER TABLE {{Table}} DROP CONSTRAINT idempotency_keys_pkey, ADD PRIMARY KEY (caller, key);
            END IF;
        END $$;
        CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON {{Table}} (created_at);
        COMMENT ON TABLE {{Table}} IS 'AsyncOrmApi: the answers of writes sent with an Idempotency-Key, kept for Idempotency:Retention.';
        """;

    /// <summary>A key's state, seen from inside the transaction that claimed it.</summary>
    public abstract record Claim
    {
        /// <summary>Another request with this key is still running (its transaction holds the key's lock).</summary>
        public sealed record Running : Claim;
        /// <summary>No live answer: this request runs, and its answer is stored in this transaction.</summary>
        public sealed record New : Claim;
        public sealed record Answered(byte[] Fingerprint, StoredAnswer Answer) : Claim;
    }

    /// <summary>
    /// Takes the key's lock for this transaction, without waiting, and reads its answer if one is kept: one round trip,
    /// two statements, so that the read's snapshot is taken after the lock (in one statement it would be taken before,
    /// and miss the answer of a request that committed in between).
    /// </summary>
    /// <remarks>
    /// The lock is an advisory one on a 64-bit hash of the key: every API process on this database sees it, it ends with
    /// the transaction, and a crash or failover releases it. Two keys of one hash would only make one wait with a 409.
    /// </remarks>
    public static async Task<Claim> ClaimAsync(AppDb db, string caller, IdempotencyKey key, TimeSpan retention, CancellationToken ct)
    {
        var connection = (NpgsqlConnection)db.Database.GetDbConnection();
        await using var batch = new NpgsqlBatch(connection)
        {
            BatchCommands =
            {
                new("SELECT pg_try_advisory_xact_lock(hashtextextended($1 || E'\\n' || $2, 0))")
                    { Parameters = { new() { Value = caller }, new() { Value = key.Value } } },
                new($"SELECT fingerprint, status, headers, body FROM {Table} WHERE caller = $1 AND key = $2 AND created_at > now() - $3")
                {
                    Parameters =
                    {
                        new() { Value = caller }, new() { Value = key.Value },
                        new() { Value = retention, NpgsqlDbType = NpgsqlDbType.Interval },
                    },
                },
            },
        };
        await using var reader = await batch.ExecuteReaderAsync(ct);
        await reader.ReadAsync(ct);
        if (!reader.GetBoolean(0))
            return new Claim.Running();
        await reader.NextResultAsync(ct);
        if (!await reader.ReadAsync(ct))
            return new Claim.New();
        // Stored as "Name: value" strings: a text[] is cheaper to write and read than jsonb, and as plain to a person.
        var headers = reader.GetFieldValue<string[]>(2).Select(h => h.Split(": ", 2)).ToDictionary(h => h[0], h => h[1]);
        return new Claim.Answered((byte[])reader[0], new StoredAnswer(reader.GetInt16(1), headers, (byte[])reader[3], replayed: true));
    }

    /// <summary>
    /// Stores the answer under the key (an expired answer of the same key is replaced) and commits the write's transaction
    /// with it; answers the WAL position after that commit, the write's <c>Consistency-Token</c>.
    /// </summary>
    /// <remarks>
    /// One round trip: the INSERT, a COMMIT and the position's query go in one batch. Npgsql's own commit is a round trip
    /// of its own, and the position needs one after it: the keyed write paid two more than this, one of them while it
    /// held the lock of the row it wrote. Keyed against unkeyed writes (wrk, 8 connections, paired medians, issue 20):
    /// PATCH /a/first 0.71-0.79 before, 0.85 after; POST /seed 0.83 before, 0.98 after.
    /// The EF Core transaction that began it is then only disposed: PostgreSQL's answer tells Npgsql the connection is out
    /// of the transaction, so nothing is rolled back. A batch that fails before its COMMIT leaves the transaction failed,
    /// and the disposal rolls it back.
    /// </remarks>
    public static async Task<string> StoreAndCommitAsync(AppDb db, string caller, IdempotencyKey key, byte[] fingerprint, StoredAnswer answer,
        CancellationToken ct)
    {
        await using var batch = new NpgsqlBatch((NpgsqlConnection)db.Database.GetDbConnection())
        {
            BatchCommands =
            {
                new($"""
                    INSERT INTO {Table} (key, fingerprint, status, headers, body, created_at, caller)
                    VALUES ($1, $2, $3, $4, $5, statement_timestamp(), $6)
                    ON CONFLICT (caller, key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status,
                        headers = excluded.headers, body = excluded.body, created_at = excluded.created_at
                    """)
                {
                    Parameters =
                    {
                        new() { Value = key.Value },
                        new() { Value = fingerprint },
                        new() { Value = (short)answer.Status },
                        new() { Value = answer.Headers.Select(h => $"{h.Key}: {h.Value}").ToArray() },
                        new() { Value = answer.Body },
                        new() { Value = caller },
                    },
                },
                new("COMMIT"),
                new(Consistency.PositionSql),
            },
        };
        return (string)(await batch.ExecuteScalarAsync(ct))!;
    }

    /// <summary>
    /// Deletes expired keys in the background, a thousand at a time so that no statement holds many row locks or runs
    /// long: a key past its retention is already ignored by <see cref="ClaimAsync"/>, so this only reclaims the space.
    /// </summary>
    public sealed class ExpiredKeys(IServiceScopeFactory scopes, IOptions<IdempotencyOptions> options, ILogger<ExpiredKeys> log)
        : BackgroundService
    {
        const int Batch = 1000;

        protected override async Task ExecuteAsync(CancellationToken stop)
        {
            var retention = options.Value.Retention;
            var period = TimeSpan.FromTicks(Math.Clamp(retention.Ticks / 4, TimeSpan.TicksPerSecond, TimeSpan.TicksPerMinute * 10));
            using var timer = new PeriodicTimer(period);
            while (await timer.WaitForNextTickAsync(stop))
            {
                try
                {
                    await using var scope = scopes.CreateAsyncScope();
                    var db = scope.ServiceProvider.GetRequiredService<AppDb>();
                    int deleted;
                    do
                        deleted = await db.Database.ExecuteSqlAsync($"""
                            DELETE FROM asyncormapi.idempotency_keys WHERE (caller, key) IN (
                                SELECT caller, key FROM asyncormapi.idempotency_keys WHERE created_at <= now() - {retention}
                                ORDER BY created_at LIMIT {Batch} FOR UPDATE SKIP LOCKED)
                            """, stop);
                    while (deleted == Batch);
                }
                catch (Exception e) when (!stop.IsCancellationRequested)
                {
                    // PostgreSQL away (or the schema not there yet): the next tick tries again.
                    log.LogDebug(e, "Deleting expired idempotency keys failed");
                }
            }
        }
    }
}
