using System.ComponentModel.DataAnnotations;

namespace AsyncOrmApi.Idempotency;

/// <summary>Settings of the section <c>Idempotency</c>.</summary>
public sealed class IdempotencyOptions
{
    public const string Section = "Idempotency";

    /// <summary>How long a key's answer is kept for retries; after that the key is forgotten and runs as new.</summary>
    [Range(typeof(TimeSpan), "00:00:01", "365.00:00:00",
        ErrorMessage = "Idempotency:Retention must be a TimeSpan from 00:00:01 to 365.00:00:00 (default 1.00:00:00, a day).")]
    public TimeSpan Retention { get; set; } = TimeSpan.FromHours(24);
}
