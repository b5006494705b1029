using System.Data.Common;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Npgsql;

namespace AsyncOrmApi.Data;

/// <summary>Row of the seed's table <c>a(id integer PK, data varchar)</c>.</summary>
public sealed class A
{
    public int Id { get; set; }
    public string? Data { get; set; }
    public List<B> Bs { get; set; } = [];
}

/// <summary>Row of the seed's table <c>b(id integer PK, a_id integer REFERENCES a(id), data varchar)</c>.</summary>
public sealed class B
{
    public int Id { get; set; }
    public int? AId { get; set; }
    public string? Data { get; set; }
}

public sealed class AppDb(DbContextOptions<AppDb> options) : DbContext(options)
{
    /// <summary>The shadow property mapped to <c>a.xmin</c>, which changes with every update of the row.</summary>
    public const string Version = "xmin";

    public DbSet<A> A => Set<A>();
    public DbSet<B> B => Set<B>();

    /// <summary>The command whose reader is open on this context's connection, if any (<see cref="RunningCommands"/>).</summary>
    NpgsqlCommand? _reading;

    /// <summary>
    /// Until disposed, <paramref name="ct"/> stops the query being read on this context's connection, on the server:
    /// otherwise disposing the reader part-way makes Npgsql read the rest of the result, and PostgreSQL runs the query to
    /// its end for nobody. Disposing waits for a cancel under way, so that none reaches the connection once it is back in
    /// the pool, serving another request.
    /// </summary>
    public IAsyncDisposable StopQueryOn(CancellationToken ct) => new QueryStop(this, ct);

    sealed class QueryStop : IAsyncDisposable
    {
        readonly CancellationTokenRegistration _registration;
        Task _cancelling = Task.CompletedTask;

        public QueryStop(AppDb db, CancellationToken ct) =>
            // Npgsql's cancel request is synchronous: it connects, and negotiates SSL, with blocking reads. Run in the
            // token's callback, on the thread pool, 50 streams whose clients left at once blocked its threads and kept
            // /health/live from answering for 0.3-2 s (issue 16); a thread of its own per cancel blocks no one.
            _registration = ct.Register(() => _cancelling = Task.Factory.StartNew(db.CancelRunningQuery, CancellationToken.None,
                TaskCreationOptions.LongRunning, TaskScheduler.Default));

        public async ValueTask DisposeAsync()
        {
            await _registration.DisposeAsync();            // the callback has run, or never will
            await _cancelling;
        }
    }

    /// <summary>
    /// Npgsql's cancel request for the query being read. It goes over a socket of its own, never a pooled connection
    /// (opening one from the pool, as this did before, waited on the exhausted pool under 100 slow streams and blocked
    /// thread-pool threads for ~48 s; issue 16).
    /// </summary>
    void CancelRunningQuery()
    {
        try
        {
            Volatile.Read(ref _reading)?.Cancel();
        }
        catch (Exception)
        {
            // Best effort: without it Npgsql still ends the query, only later.
        }
    }

    /// <summary>Remembers each context's open reader's command, so that <see cref="CancelRunningQuery"/> can reach it.</summary>
    public sealed class RunningCommands : DbCommandInterceptor
    {
        public static readonly RunningCommands Instance = new();

        // From before the query runs: one that waits (for a lock, say) can be stopped too.
        public override ValueTask<InterceptionResult<DbDataReader>> ReaderExecutingAsync(DbCommand command, CommandEventData data,
            InterceptionResult<DbDataReader> result, CancellationToken ct = default)
        {
            if (data.Context is AppDb db)
                Volatile.Write(ref db._reading, command as NpgsqlCommand);
            return ValueTask.FromResult(result);
        }

        public override Task CommandFailedAsync(DbCommand command, CommandErrorEventData data, CancellationToken ct = default)
        {
            if (data.Context is AppDb db)
                Volatile.Write(ref db._reading, null);
            return Task.CompletedTask;
        }

        public override InterceptionResult DataReaderClosing(DbCommand command, DataReaderClosingEventData data, InterceptionResult result)
        {
            if (data.Context is AppDb db)
                Volatile.Write(ref db._reading, null);
            return result;
        }

        public override ValueTask<InterceptionResult> DataReaderClosingAsync(DbCommand command, DataReaderClosingEventData data,
            InterceptionResult result)
        {
            DataReaderClosing(command, data, result);
            return ValueTask.FromResult(result);
        }
    }

    protected override void OnModelCreating(ModelBuilder model)
    {
        // The seed's SQLAlchemy model, name for name, so the API and the seed program can share one
        // database: serial keys (a_id_seq, b_id_seq), unbounded varchar, PostgreSQL's default
        // constraint names. The index on b.a_id is the one addition: the seed pays for its absence
        // in every join.
        model.UseSerialColumns();

        model.Entity<A>(a =>
        {
            a.ToTable("a");
            a.HasKey(x => x.Id).HasName("a_pkey");
            a.Property(x => x.Id).HasColumnName("id");
            a.Property(x => x.Data).HasColumnName("data").HasColumnType("varchar");
            // PostgreSQL's own row version, a system column: ETags without adding a column to the seed's table.
            a.Property<uint>(Version).IsRowVersion();
            a.HasMany(x => x.Bs).WithOne().HasForeignKey(b => b.AId).HasConstraintName("b_a_id_fkey");
        });

        model.Entity<B>(b =>
        {
            b.ToTable("b");
            b.HasKey(x => x.Id).HasName("b_pkey");
            b.Property(x => x.Id).HasColumnName("id");
            b.Property(x => x.AId).HasColumnName("a_id");
            b.Property(x => x.Data).HasColumnName("data").HasColumnType("varchar");
            b.HasIndex(x => x.AId).HasDatabaseName("ix_b_a_id");
        });
    }
}
