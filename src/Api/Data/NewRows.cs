using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace AsyncOrmApi.Data;

/// <summary>
/// A batch of A and their Bs, as their ids (0: none given, the sequences give them) and the UTF-8 text of their
/// <c>data</c>, packed into two pooled buffers: per A its B count, id, line number and data, then every B's id and
/// data in line order; a length of -1 is null. Objects per line would
/// live from parsing to COPY, long enough to be promoted by the GC and grow the heap with the body's size
/// (57 MB growth over a 1,000,000-line ingest in script/bench); pooled bytes do not.
/// </summary>
public sealed class NewRows : IDisposable
{
    // Big enough for a typical batch, so that growing is rare; arrays this large come back from the pool.
    byte[] _as = ArrayPool<byte>.Shared.Rent(256 * 1024);
    byte[] _bs = ArrayPool<byte>.Shared.Rent(256 * 1024);
    int _aLength, _bLength, _countAt = -1;
    bool _hasData;

    /// <summary>The A a batch is filled to before it is handed on: an ingest's lines, a seed's copies of the graph.</summary>
    public const int BatchA = 10_000;

    public int A { get; private set; }
    public int B { get; private set; }

    /// <summary>How many Bs the last A has.</summary>
    public int LastBs => BinaryPrimitives.ReadInt32LittleEndian(_as.AsSpan(_countAt));
    public int Bytes => _aLength + _bLength;

    /// <summary>Starts the next A, of line <paramref name="line"/>; its id, data (once at most) and Bs follow, then <see cref="EndA"/>.</summary>
    public void StartA(int line)
    {
        _countAt = _aLength;
        _hasData = false;
        Append(ref _as, ref _aLength, 0);
        Append(ref _as, ref _aLength, 0);
        Append(ref _as, ref _aLength, line);
    }

    /// <summary>The A's own id, from its line.</summary>
    public void SetId(int id) => BinaryPrimitives.WriteInt32LittleEndian(_as.AsSpan(_countAt + sizeof(int)), id);

    public void SetData(ReadOnlySpan<byte> utf8)
    {
        Append(ref _as, ref _aLength, utf8);
        _hasData = true;
    }

    public void SetNullData()
    {
        Append(ref _as, ref _aLength, -1);
        _hasData = true;
    }

    public void AddB(int id, ReadOnlySpan<byte> utf8) => AddB(id, utf8, isNull: false);

    public void AddNullB(int id) => AddB(id, default, isNull: true);

    void AddB(int id, ReadOnlySpan<byte> utf8, bool isNull)
    {
        Append(ref _bs, ref _bLength, id);
        if (isNull)
            Append(ref _bs, ref _bLength, -1);
        else
            Append(ref _bs, ref _bLength, utf8);
        BinaryPrimitives.WriteInt32LittleEndian(_as.AsSpan(_countAt), BinaryPrimitives.ReadInt32LittleEndian(_as.AsSpan(_countAt)) + 1);
        B++;
    }

    /// <summary>Ends the A: without a data it is null, as the column allows.</summary>
    public void EndA()
    {
        if (!_hasData)
            SetNullData();
        A++;
    }

    // The text of the value being read, decoded into one reused buffer rather than a string per value.
    char[] _text = [];

    /// <summary>The A in order: each one's id (0: none given), line, data (valid until the next item) and how many Bs it has.</summary>
    public IEnumerable<(int Id, int Line, ReadOnlyMemory<char>? Data, int Bs)> As()
    {
        for (int at = 0, i = 0; i < A; i++)
        {
            var bs = Read(_as, ref at);
            var id = Read(_as, ref at);
            var line = Read(_as, ref at);
            yield return (id, line, Text(_as, ref at), bs);
        }
    }

    /// <summary>Each A's id, line and number of Bs, in order, without decoding its data.</summary>
    public IEnumerable<(int Id, int Line, int Bs)> Heads()
    {
        for (int at = 0, i = 0; i < A; i++)
        {
            var bs = Read(_as, ref at);
            var id = Read(_as, ref at);
            var line = Read(_as, ref at);
            var length = Read(_as, ref at);
            at += Math.Max(0, length);
            yield return (id, line, bs);
        }
    }

    /// <summary>The Bs' ids (0: none given) and data (each valid until the next item), in the order of their A and then their line.</summary>
    public IEnumerable<(int Id, ReadOnlyMemory<char>? Data)> Bs()
    {
        for (int at = 0, i = 0; i < B; i++)
        {
            var id = Read(_bs, ref at);
            yield return (id, Text(_bs, ref at));
        }
    }

    ReadOnlyMemory<char>? Text(byte[] buffer, ref int at)
    {
        var length = Read(buffer, ref at);
        if (length < 0)
            return null;
        if (_text.Length < length)
            _text = new char[Math.Max(length, 256)];
        var chars = Encoding.UTF8.GetChars(buffer, at, length, _text, 0);
        at += length;
        return _text.AsMemory(0, chars);
    }

    static int Read(byte[] buffer, ref int at)
    {
        var value = BinaryPrimitives.ReadInt32LittleEndian(buffer.AsSpan(at));
        at += sizeof(int);
        return value;
    }

    static void Append(ref byte[] buffer, ref int length, int value)
    {
        Reserve(ref buffer, length, sizeof(int));
        BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(length), value);
        length += sizeof(int);
    }

    static void Append(ref byte[] buffer, ref int length, ReadOnlySpan<byte> utf8)
    {
        Append(ref buffer, ref length, utf8.Length);
        Reserve(ref buffer, length, utf8.Length);
        utf8.CopyTo(buffer.AsSpan(length));
        length += utf8.Length;
    }

    static void Reserve(ref byte[] buffer, int length, int more)
    {
        if (length + more <= buffer.Length)
            return;
        var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(buffer.Length * 2, length + more));
        buffer.AsSpan(0, length).CopyTo(bigger);
        ArrayPool<byte>.Shared.Return(buffer);
        buffer = bigger;
    }

    /// <summary>Appends the batch to <paramref name="file"/> as it is packed (the counts, then the two buffers), for <see cref="ReadFromAsync"/>.</summary>
    public async Task WriteToAsync(Stream file, CancellationToken ct)
    {
        var head = new byte[4 * sizeof(int)];
        for (var (i, at) = (0, 0); i < 4; i++, at += sizeof(int))
            BinaryPrimitives.WriteInt32LittleEndian(head.AsSpan(at), i switch { 0 => A, 1 => B, 2 => _aLength, _ => _bLength });
        await file.WriteAsync(head, ct);
        await file.WriteAsync(_as.AsMemory(0, _aLength), ct);
        await file.WriteAsync(_bs.AsMemory(0, _bLength), ct);
    }

    /// <summary>The next batch <see cref="WriteToAsync"/> wrote to <paramref name="file"/>.</summary>
    public static async Task<NewRows> ReadFromAsync(Stream file, CancellationToken ct)
    {
        var head = new byte[4 * sizeof(int)];
        await file.ReadExactlyAsync(head, ct);
        var rows = new NewRows
        {
            A = BinaryPrimitives.ReadInt32LittleEndian(head),
            B = BinaryPrimitives.ReadInt32LittleEndian(head.AsSpan(4)),
        };
        try
        {
            rows._aLength = BinaryPrimitives.ReadInt32LittleEndian(head.AsSpan(8));
            rows._bLength = BinaryPrimitives.ReadInt32LittleEndian(head.AsSpan(12));
            Reserve(ref rows._as, 0, rows._aLength);
            Reserve(ref rows._bs, 0, rows._bLength);
            await file.ReadExactlyAsync(rows._as.AsMemory(0, rows._aLength), ct);
            await file.ReadExactlyAsync(rows._bs.AsMemory(0, rows._bLength), ct);
            return rows;
        }
        catch
        {
            rows.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        ArrayPool<byte>.Shared.Return(_as);
        ArrayPool<byte>.Shared.Return(_bs);
        _as = _bs = [];
    }
}
