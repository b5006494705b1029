using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;

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

public sealed partial class AppDb(DbContextOptions<AppDb> options) : DbContext(options)
{
    /// <summary>The shadow property mapped to <c>a.xmin</c>, which changes with every update of the row.</summary>
    public const string Version = "xmin";

    public DbSet<A> A => Set<A>();
    public DbSet<B> B => Set<B>();

    /// <summary>
    /// Begins a write's transaction, or joins the one already open: a write sent with an Idempotency-Key runs in the
    /// transaction its answer is stored in, which commits the two together (Idempotency/IdempotentWrites.cs).
    /// </summary>
    public async Task<WriteTransaction> BeginWriteAsync(CancellationToken ct) =>
        Database.CurrentTransaction is null ? new(await Database.BeginTransactionAsync(ct)) : default;

    /// <summary>A write's own transaction, or nothing when it joined another: then the other's owner commits.</summary>
    public readonly struct WriteTransaction(IDbContextTransaction? own) : IAsyncDisposable
    {
        public bool Joined => own is null;
        public Task CommitAsync(CancellationToken ct) => own?.CommitAsync(ct) ?? Task.CompletedTask;
        public ValueTask DisposeAsync() => own?.DisposeAsync() ?? ValueTask.CompletedTask;
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
