using System.Diagnostics.CodeAnalysis;
using System.Globalization;

namespace AsyncOrmApi.Changes;

/// <summary>
/// A change's SSE id: <c>{source}-{commit LSN}-{ordinal}</c>, e.g. <c>1f0c9a3e-00000000016B3748-2</c>. The commit's WAL
/// position and the change's ordinal in its transaction order changes strictly; the source (a hash of the server's
/// system identifier, timeline and database) keeps an id of another database or of a timeline before a failover from
/// being taken for a position in this one.
/// </summary>
public readonly record struct ChangeId(uint Source, ulong Lsn, int Ordinal) : IComparable<ChangeId>
{
    public int CompareTo(ChangeId other) => (Lsn, Ordinal).CompareTo((other.Lsn, other.Ordinal));
    public static bool operator <(ChangeId x, ChangeId y) => x.CompareTo(y) < 0;
    public static bool operator >(ChangeId x, ChangeId y) => x.CompareTo(y) > 0;
    public static bool operator <=(ChangeId x, ChangeId y) => x.CompareTo(y) <= 0;
    public static bool operator >=(ChangeId x, ChangeId y) => x.CompareTo(y) >= 0;

    public override string ToString() => $"{Source:x8}-{Lsn:X16}-{Ordinal}";

    public static bool TryParse(string? text, [NotNullWhen(true)] out ChangeId? id)
    {
        id = null;
        var parts = text?.Split('-');
        if (parts is not [{ Length: 8 } source, { Length: 16 } lsn, { Length: > 0 and < 10 } ordinal]
            || !uint.TryParse(source, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var s)
            || !ulong.TryParse(lsn, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var l)
            || !int.TryParse(ordinal, NumberStyles.None, CultureInfo.InvariantCulture, out var o) || o < 1)
            return false;
        id = new ChangeId(s, l, o);
        return true;
    }
}
