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
    /// Stops the query being read on the server, when its client has gone: otherwise disposing the reader part-way makes
    /// Npgsql read the rest of the result, and PostgreSQL runs the query to its end for nobody. Npgsql's cancel request
    /// goes over a socket of its own, never a pooled connection (opening one from the pool here, as this did before,
    /// waited on the exhausted pool under 100 slow streams and blocked thread-pool threads for ~48 s; issue 16).
    /// </summary>
    public void CancelRunningQuery()
    {
        try
        {
            Volatile.Read(ref _reading)?.Cancel();
        }
        catch (Exception)
        {
            // Best effort: without it Npgsql still ends the query, only later. Nothing may escape: this runs as a
            // cancellation callback, on a request timeout's timer thread too, where an exception ends the process.
        }
    }

    /// <summary>Remembers each context's open reader's command, so that <see cref="CancelRunningQuery"/> can reach it.</summary>
    public sealed class RunningCommands : DbCommandInterceptor
    {
        public static readonly RunningCommands Instance = new();

        public override ValueTask<DbDataReader> ReaderExecutedAsync(DbCommand command, CommandExecutedEventData data, DbDataReader result,
            CancellationToken ct = default)
        {
            if (data.Context is AppDb db)
                Volatile.Write(ref db._reading, command as NpgsqlCommand);
            return ValueTask.FromResult(result);
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
