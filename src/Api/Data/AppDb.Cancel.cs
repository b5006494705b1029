using System.Data.Common;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Npgsql;

namespace AsyncOrmApi.Data;

/// <summary>Stopping a query on the server when its client has gone, without a pooled connection or a blocked thread.</summary>
public sealed partial class AppDb
{
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
}
