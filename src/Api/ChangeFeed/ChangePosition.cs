using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using AsyncOrmApi.Data;

namespace AsyncOrmApi.Changes;

/// <summary>
/// Where a read's snapshot ends in the feed, sent as <c>Change-Position</c>: <c>{source}-{WAL position}-0-{xmax}</c> and one
/// <c>-{xid}</c> per transaction in progress, e.g. <c>1f0c9a3e-00000000016B3748-0-000004d2-000004cf</c>. A change id of the
/// feed's form (source, position, ordinal 0: before the changes committed there), with the snapshot itself.
/// </summary>
/// <remarks>
/// A WAL position alone is no exact boundary: a transaction writes its commit record before it becomes visible, so a
/// snapshot can miss a transaction whose commit lies before the position read with it. So, as ElectricSQL does, the
/// snapshot decides: a transaction the read saw is one below <c>xmax</c> and not in progress (pg_current_snapshot()), and
/// the feed sends exactly the transactions the read did not see (docs/design.md, "From a read to the feed").
/// </remarks>
public sealed record ChangePosition(uint Source, ulong Lsn, uint Xmax, uint[] InProgress)
{
    /// <summary>Whether the read saw the transaction <paramref name="xid"/>'s changes (32-bit xids, compared modulo 2^32).</summary>
    public bool Saw(uint xid) => (int)(xid - Xmax) < 0 && Array.IndexOf(InProgress, xid) < 0;

    public override string ToString() =>
        $"{Source:x8}-{Lsn:X16}-0-{Xmax:x8}" + string.Concat(InProgress.Select(x => $"-{x:x8}"));

    /// <summary>The position of a read whose snapshot is <paramref name="snapshot"/>, in the log of <paramref name="source"/>.</summary>
    public static ChangePosition Of(uint source, ReadSnapshot snapshot)
    {
        // pg_current_snapshot(): xmin:xmax:xip,... as 64-bit xids; the replication protocol carries 32-bit ones.
        var parts = snapshot.Snapshot.Split(':');
        var inProgress = parts[2].Length == 0 ? [] : parts[2].Split(',').Select(x => (uint)ulong.Parse(x, CultureInfo.InvariantCulture)).ToArray();
        return new ChangePosition(source, (ulong)NpgsqlTypes.NpgsqlLogSequenceNumber.Parse(snapshot.Lsn),
            (uint)ulong.Parse(parts[1], CultureInfo.InvariantCulture), inProgress);
    }

    /// <summary>At most this many transactions in progress: max_connections' order, and a header's length.</summary>
    const int MaxInProgress = 1000;

    public static bool TryParse(string? text, [NotNullWhen(true)] out ChangePosition? position)
    {
        position = null;
        var parts = text?.Split('-');
        if (parts is not { Length: >= 4 and <= MaxInProgress + 4 } || parts[0].Length != 8 || parts[1].Length != 16 || parts[2] != "0"
            || !uint.TryParse(parts[0], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var source)
            || !ulong.TryParse(parts[1], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var lsn))
            return false;
        var xids = new uint[parts.Length - 3];
        for (var i = 3; i < parts.Length; i++)
            if (parts[i].Length != 8 || !uint.TryParse(parts[i], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out xids[i - 3]))
                return false;
        position = new ChangePosition(source, lsn, xids[0], xids[1..]);
        return true;
    }
}
