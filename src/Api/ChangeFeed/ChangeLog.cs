using System.Text;

namespace AsyncOrmApi.Changes;

/// <summary>
/// One event of the feed, formatted once as its whole Server-Sent Events frame (<c>event:</c>, <c>data:</c>, <c>id:</c> and
/// the blank line) and written to every subscriber as is; with its transaction's id (for a read's position) and its
/// table (<c>a</c>, <c>b</c>, or null for a reset, which every subscriber gets).
/// </summary>
public sealed record Change(ChangeId Id, uint Xid, string? Table, byte[] Frame)
{
    /// <summary>The frame of an event of <paramref name="type"/> whose data is <paramref name="json"/> (one line: JSON
    /// escapes every line break inside its strings).</summary>
    public static Change Of(ChangeId id, uint xid, string type, ReadOnlySpan<byte> json)
    {
        var head = Encoding.UTF8.GetBytes($"event: {type}\ndata: ");
        var tail = Encoding.UTF8.GetBytes($"\nid: {id}\n\n");
        var dot = type.IndexOf('.');
        return new Change(id, xid, dot < 0 ? null : type[..dot], [.. head, .. json, .. tail]);
    }
}

/// <summary>What a subscriber has already seen, and which table it follows (null: both).</summary>
public sealed record Since(ChangeId? After, ChangePosition? Position, string? Table)
{
    public bool Wants(Change change) =>
        (Table is null || change.Table is null || change.Table == Table)
        && (Position is { } read ? !read.Saw(change.Xid) : After is not { } after || change.Id > after);
}

/// <summary>
/// The changes one replication slot has delivered: the last <c>window</c> of them, and no more than <c>windowBytes</c> of
/// event data, kept for resumes in a ring that every subscriber reads with its own cursor, so fanning out costs no copy
/// and no memory per subscriber. A
/// subscriber more than <c>maxLag</c> changes behind is cut (its connection aborted); it resumes with its last id.
/// The log ends when its slot does: its subscribers are cut, and their resumes answer 409 from the next log.
/// </summary>
public sealed class ChangeLog(uint source, ulong startLsn, int window, long windowBytes, int maxLag)
{
    readonly Lock _gate = new();
    readonly Change[] _ring = new Change[window];
    readonly List<Subscriber> _subscribers = [];
    long _head;                                          // sequence number of the next change
    long _tail;                                          // sequence number of the oldest change kept
    long _bytes;                                         // the frames of the changes kept
    // Every change after this position is in the ring: at first the slot's start (whose own commit, if any,
    // was not decoded), later the last change that fell out of the ring.
    ChangeId _floor = new(source, startLsn, int.MaxValue);
    TaskCompletionSource _appended = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public uint Source => source;

    readonly TaskCompletionSource _wanted = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes at the first subscription: the reader streams from then on.</summary>
    public Task Wanted => _wanted.Task;

    /// <summary>How many changes the window holds now, and their event data in bytes (for /metrics).</summary>
    public (long Events, long Bytes) Size
    {
        get { lock (_gate) return (_head - _tail, _bytes); }
    }
    public bool Ended { get; private set; }

    /// <summary>A subscriber's place in the log: the sequence number of the next change it reads.</summary>
    public sealed class Subscriber(long cursor, Since since, Action cut)
    {
        internal long Cursor = cursor;
        internal readonly Since Since = since;
        internal readonly Action Cut = cut;
    }

    /// <summary>Adds a transaction's changes (or a part of a large one) and wakes the subscribers.</summary>
    public void Append(List<Change> changes)
    {
        if (changes.Count == 0)
            return;
        List<Subscriber>? lagging = null;
        TaskCompletionSource appended;
        lock (_gate)
        {
            foreach (var change in changes)
            {
                var size = change.Frame.Length;
                // The oldest changes leave the window to make room, by count and by bytes (a change larger than the
                // whole window cannot come: the decoder turns its transaction into one small reset).
                while (_tail < _head && (_head - _tail >= _ring.Length || _bytes + size > windowBytes))
                {
                    ref var oldest = ref _ring[_tail++ % _ring.Length];
                    _floor = oldest.Id;
                    _bytes -= oldest.Frame.Length;
                    oldest = null!;
                }
                _ring[_head++ % _ring.Length] = change;
                _bytes += size;
            }
            foreach (var s in _subscribers)
                if (_head - Volatile.Read(ref s.Cursor) > maxLag || Volatile.Read(ref s.Cursor) < _tail)
                    (lagging ??= []).Add(s);
            if (lagging is not null)
                _subscribers.RemoveAll(lagging.Contains);
            appended = _appended;
            _appended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        appended.SetResult();
        lagging?.ForEach(s => s.Cut());
    }

    /// <summary>Wakes every waiting subscriber without a change (a heartbeat tick).</summary>
    public void Wake()
    {
        TaskCompletionSource appended;
        lock (_gate)
        {
            appended = _appended;
            _appended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        appended.SetResult();
    }

    /// <summary>No more changes will come (the slot is gone): every subscriber is cut.</summary>
    public void End()
    {
        List<Subscriber> all;
        TaskCompletionSource appended;
        lock (_gate)
        {
            Ended = true;
            all = [.. _subscribers];
            _subscribers.Clear();
            appended = _appended;
        }
        appended.TrySetResult();
        all.ForEach(s => s.Cut());
    }

    /// <summary>
    /// Where a subscriber that has seen what <paramref name="since"/> says starts; null when this log cannot tell what
    /// followed it: an id or a read of another source, or older than what the ring holds.
    /// </summary>
    public Subscriber? Subscribe(Since since, Action cut)
    {
        lock (_gate)
        {
            if (Ended || since.After is { } id && (id.Source != source || id < _floor)
                // A read at the slot's start has seen nothing it decodes; one at a change that left the ring may lack it.
                || since.Position is { } read && (read.Source != source || read.Lsn < _floor.Lsn
                    || read.Lsn == _floor.Lsn && _floor.Ordinal != int.MaxValue))
                return null;
            var cursor = _head;
            if (since.After is { } seen)
                while (cursor > _tail && _ring[(cursor - 1) % _ring.Length] is { } c && c.Id > seen)
                    cursor--;
            // A read's position: from the first change the read did not see. Its commit may lie before the read's WAL
            // position (see ChangePosition), so the ring is searched from its start, not from that position.
            if (since.Position is { } position)
                for (cursor = _tail; cursor < _head && position.Saw(_ring[cursor % _ring.Length].Xid);)
                    cursor++;
            var subscriber = new Subscriber(cursor, since, cut);
            _wanted.TrySetResult();
            _subscribers.Add(subscriber);
            return subscriber;
        }
    }

    public void Unsubscribe(Subscriber subscriber)
    {
        lock (_gate)
            _subscribers.Remove(subscriber);
    }

    /// <summary>The id of the newest change, or the position where the log started.</summary>
    public ChangeId Newest
    {
        get { lock (_gate) return _head == 0 ? _floor : _ring[(_head - 1) % _ring.Length].Id; }
    }

    public int Subscribers
    {
        get { lock (_gate) return _subscribers.Count; }
    }

    /// <summary>
    /// Copies the changes the subscriber has not read yet into <paramref name="into"/>; when there are none, returns 0
    /// and the task that completes on the next append. -1 when it fell out of the ring or the log ended.
    /// </summary>
    public int Read(Subscriber subscriber, Change[] into, out Task appended)
    {
        lock (_gate)
        {
            appended = _appended.Task;
            var cursor = subscriber.Cursor;
            if (Ended || cursor < _tail)
                return -1;
            var n = 0;
            for (; cursor < _head && n < into.Length; cursor++)
            {
                var change = _ring[cursor % _ring.Length];
                if (subscriber.Since.Wants(change))
                    into[n++] = change;
            }
            Volatile.Write(ref subscriber.Cursor, cursor);
            return n;
        }
    }
}
