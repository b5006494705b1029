namespace AsyncOrmApi.Data;

/// <summary>
/// A stream's turn at PostgreSQL: each batch of <see cref="Queries.AllA"/> (and the stream's first step, its connection and
/// BEGIN) takes one, and gives it back when the batch has been read or when the stream waits for its client, whichever
/// comes first. At most all cores but one run a stream's query at a time, so PostgreSQL, when it shares the machine,
/// leaves a core to everything else, as AStreamResult's bulkhead does for the API's own threads.
/// </summary>
/// <remarks>
/// Without it, 50 streams started at once made their 50 backends runnable together on 2 cores while each filled its
/// client's socket buffers, and /health/live took 0.2-0.55 s for the first second (34-60 processes runnable); with it,
/// 2-40 ms throughout, and 2-65 ms right after all 50 hung up (issue 16). One stream's speed does not change: it takes and
/// gives its turn alone (300,000 A in 0.42-0.55 s, as before). Fast streams at once share one backend's pace, as they
/// share the bulkhead's cores: four took 1.62 s against 1.51 s (medians of 8, alternating with the build before).
/// </remarks>
public sealed class FetchTurn : IDisposable
{
    static readonly SemaphoreSlim Turns = new(Math.Max(1, Environment.ProcessorCount - 1));

    bool held;

    /// <summary>Waits for a turn, unless this stream holds one; false when the request ends first.</summary>
    public async ValueTask<bool> TakeAsync(CancellationToken ct)
    {
        if (held)
            return true;
        try
        {
            await Turns.WaitAsync(ct);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        held = true;
        return true;
    }

    /// <summary>Gives the turn back, if held. The stream's reader and its writer call it in turn, never at once.</summary>
    public void Give()
    {
        if (!held)
            return;
        held = false;
        Turns.Release();
    }

    public void Dispose() => Give();
}
