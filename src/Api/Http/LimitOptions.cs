using System.ComponentModel.DataAnnotations;

namespace AsyncOrmApi.Http;

// The limits' settings, a class a section, checked when the process starts (Limits.AddLimits): a bad value stops the start
// with a message that names the setting and its rule.

/// <summary>Section <c>RateLimit</c>: budgets per client and minute; 0 turns one off.</summary>
public sealed class RateLimitOptions
{
    public const string Section = "RateLimit";
    public const int DefaultWritesPerMinute = 1_200;

    /// <summary>Unset: 1,200 outside Development, off in Development.</summary>
    [Range(0, int.MaxValue, ErrorMessage = "RateLimit:WritesPerMinute must be 0 (off) or a positive integer (default 1,200 outside Development).")]
    public int? WritesPerMinute { get; set; }

    [Range(0, int.MaxValue, ErrorMessage = "RateLimit:ReadsPerMinute must be 0 (off) or a positive integer (default off).")]
    public int? ReadsPerMinute { get; set; }

    public const int DefaultWriteBytesPerMinute = 16 * 1024 * 1024;

    /// <summary>
    /// The request bytes a client without the admin key may write per minute (what its writes store: rows, answers kept
    /// for its keys, and their WAL, grow with them). Unset: 16 MiB outside Development, off in Development.
    /// </summary>
    [Range(0, int.MaxValue, ErrorMessage = "RateLimit:WriteBytesPerMinute must be 0 (off) or a positive integer (default 16 MiB outside Development).")]
    public int? WriteBytesPerMinute { get; set; }
}

/// <summary>Section <c>Timeouts</c>.</summary>
public sealed class TimeoutOptions
{
    public const string Section = "Timeouts";

    [Range(1, 86_400, ErrorMessage = "Timeouts:RequestSeconds must be from 1 to 86,400 (default 30): a request's time before its 504.")]
    public int RequestSeconds { get; set; } = 30;
}

/// <summary>Section <c>Shutdown</c>.</summary>
public sealed class ShutdownOptions
{
    public const string Section = "Shutdown";

    [Range(0, 86_400, ErrorMessage = "Shutdown:TimeoutSeconds must be from 0 to 86,400 (default 30): the time in-flight requests get on SIGTERM.")]
    public int TimeoutSeconds { get; set; } = 30;
}

/// <summary>Section <c>Writes</c>: concurrent PATCH /a/first, POST /seed and POST /reset, before their bodies are read.</summary>
public sealed class WriteOptions
{
    public const string Section = "Writes";

    /// <summary>24: a burst of two dozen concurrent read-modify-writes from one client still goes through.</summary>
    [Range(1, 1_000_000, ErrorMessage = "Writes:PerClient must be from 1 to 1,000,000 (default 24).")]
    public int PerClient { get; set; } = 24;

    /// <summary>Unset: a quarter of the connection string's Max Pool Size.</summary>
    [Range(1, 1_000_000, ErrorMessage = "Writes:Total must be from 1 to 1,000,000 (default a quarter of Max Pool Size).")]
    public int? Total { get; set; }

    /// <summary>The most UTF-8 bytes a PATCH /a/first may set <c>data</c> to: the seed's values are a few bytes.</summary>
    [Range(1, 1_000_000, ErrorMessage = "Writes:MaxDataBytes must be from 1 to 1,000,000 (default 65,536).")]
    public int MaxDataBytes { get; set; } = 64 * 1024;
}

/// <summary>Section <c>Streams</c>: concurrent GET /a/stream and POST /a.</summary>
public sealed class StreamOptions
{
    public const string Section = "Streams";

    [Range(1, 1_000_000, ErrorMessage = "Streams:PerClient must be from 1 to 1,000,000 (default 4).")]
    public int PerClient { get; set; } = 4;

    /// <summary>Unset: half of the connection string's Max Pool Size.</summary>
    [Range(1, 1_000_000, ErrorMessage = "Streams:Total must be from 1 to 1,000,000 (default half of Max Pool Size).")]
    public int? Total { get; set; }

    /// <summary>
    /// The longest a GET /a/stream holds its snapshot (a REPEATABLE READ transaction), however slowly its client reads:
    /// then it is cut, and the client resumes with <c>?after=</c> the last id it got.
    /// </summary>
    [Range(1, 86_400, ErrorMessage = "Streams:MaxSeconds must be from 1 to 86,400 (default 600).")]
    public int MaxSeconds { get; set; } = 600;
}

/// <summary>Section <c>Reset</c>.</summary>
public sealed class ResetOptions
{
    public const string Section = "Reset";
    public const double DefaultLockTimeoutSeconds = 3;

    [Range(0.1, 3_600, ErrorMessage = "Reset:LockTimeoutSeconds must be from 0.1 to 3,600 (default 3): how long POST /reset waits for the tables.")]
    public double LockTimeoutSeconds { get; set; } = DefaultLockTimeoutSeconds;
}

/// <summary>Section <c>Seed</c>.</summary>
public sealed class SeedOptions
{
    public const string Section = "Seed";
    public const int DefaultMaxCopiesWithKeyAside = 100_000;

    /// <summary>
    /// The largest <c>POST /seed?count=N</c> into empty tables that sets b's foreign key aside (reads of a and b wait for it:
    /// 2-6 s at 100,000 copies in script/bench, well within their request timeout); 0: never. Larger seeds check row by row.
    /// </summary>
    [Range(0, 1_000_000, ErrorMessage = "Seed:MaxCopiesWithKeyAside must be from 0 to 1,000,000 (default 100,000; 0 = never): "
        + "the largest seed into empty tables that drops b's foreign key and adds it back, while reads wait for it.")]
    public int MaxCopiesWithKeyAside { get; set; } = DefaultMaxCopiesWithKeyAside;
}

/// <summary>Section <c>Ingest</c>: the bounds of a POST /a body.</summary>
public sealed class IngestOptions
{
    public const string Section = "Ingest";
    public const int DefaultMinBytesPerSecond = 1024;
    public const int DefaultStallSeconds = 10;

    [Range(1L, long.MaxValue, ErrorMessage = "Ingest:MaxBodyBytes must be a positive number of bytes (default 1073741824, 1 GiB).")]
    public long MaxBodyBytes { get; set; } = 1024L * 1024 * 1024;

    [Range(0, int.MaxValue, ErrorMessage = "Ingest:MinBytesPerSecond must be 0 or more (default 1,024): the least a body brings a second.")]
    public int MinBytesPerSecond { get; set; } = DefaultMinBytesPerSecond;

    [Range(1, 3_600, ErrorMessage = "Ingest:StallSeconds must be from 1 to 3,600 (default 10): the window the minimum rate is measured over.")]
    public int StallSeconds { get; set; } = DefaultStallSeconds;

    public const int DefaultMaxRowsWithKeyAside = 3_000_000;

    /// <summary>
    /// The most rows (A and B) of a body into empty tables that is read whole into a temporary file first, then copied with
    /// b's foreign key set aside and checked once after (reads of a and b wait for the copy, not for the client: a GET /a sent
    /// during script/bench's 2,500,000 rows waited 10.8-12.5 s, in a slow spell of its 2-core host); 0: never. Longer
    /// bodies, and every body into tables with rows, are copied as they arrive.
    /// </summary>
    [Range(0, 100_000_000, ErrorMessage = "Ingest:MaxRowsWithKeyAside must be from 0 to 100,000,000 (default 3,000,000; 0 = never): "
        + "the most rows of a body into empty tables that is read whole first and copied with b's foreign key set aside, while reads wait for the copy.")]
    public int MaxRowsWithKeyAside { get; set; } = DefaultMaxRowsWithKeyAside;
}
