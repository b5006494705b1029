namespace AsyncOrmApi.Data;

/// <summary>
/// An ingest's batches, read from the body into a temporary file before any is copied, so that a load with b's foreign key
/// set aside (<see cref="KeyAside"/>) holds a and b for the time PostgreSQL takes, never for the time a client takes to send.
/// It stops at a number of rows: a longer body is copied as it arrives, the spooled batches first.
/// </summary>
sealed class Spool : IAsyncDisposable
{
    readonly FileStream _file;
    readonly IAsyncEnumerator<NewRows> _rest;
    int _batches;
    bool _ended;

    Spool(FileStream file, IAsyncEnumerator<NewRows> rest) => (_file, _rest) = (file, rest);

    /// <summary>Whether the whole body is in the file, within the rows the spool was given.</summary>
    public bool Whole { get; private set; }

    /// <summary>Reads batches into the file until the body ends or holds more than <paramref name="maxRows"/> rows (A and B).</summary>
    public static async Task<Spool> FillAsync(IAsyncEnumerable<NewRows> batches, long maxRows, CancellationToken ct)
    {
        // Unlinked as soon as it is open, so that nothing is left behind however the process ends (DeleteOnClose left a
        // killed process's file); the kernel frees it when the stream closes. Windows cannot unlink an open file.
        var path = Path.Combine(Path.GetTempPath(), $"asyncormapi-ingest-{Guid.NewGuid():N}");
        var file = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16,
            OperatingSystem.IsWindows() ? FileOptions.DeleteOnClose : FileOptions.None);
        if (!OperatingSystem.IsWindows())
            File.Delete(path);
        var spool = new Spool(file, batches.GetAsyncEnumerator(ct));
        try
        {
            long rows = 0;
            while (rows <= maxRows)
            {
                if (!await spool._rest.MoveNextAsync())
                {
                    spool._ended = true;
                    break;
                }
                using var batch = spool._rest.Current;
                rows += batch.A + batch.B;
                await batch.WriteToAsync(file, ct);
                spool._batches++;
            }
            spool.Whole = spool._ended && rows <= maxRows;
            return spool;
        }
        catch
        {
            await spool.DisposeAsync();
            throw;
        }
    }

    /// <summary>The spooled batches, then the rest of the body as it arrives.</summary>
    public async IAsyncEnumerable<NewRows> Batches([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct = default)
    {
        await _file.FlushAsync(ct);
        _file.Position = 0;
        for (var i = 0; i < _batches; i++)
            yield return await NewRows.ReadFromAsync(_file, ct);
        while (!_ended && await _rest.MoveNextAsync())
            yield return _rest.Current;
    }

    public async ValueTask DisposeAsync()
    {
        await _rest.DisposeAsync();
        await _file.DisposeAsync();
    }
}
