using System.ComponentModel.DataAnnotations;

namespace AsyncOrmApi.Changes;

/// <summary>Settings of the section <c>ChangeFeed</c>, checked at start: a bad value stops the process naming the setting.</summary>
public sealed class ChangeFeedOptions
{
    public const string Section = "ChangeFeed";

    [Required, RegularExpression("^[a-z_][a-z0-9_]{0,62}$",
        ErrorMessage = "ChangeFeed:Publication must be a PostgreSQL name in lower case (letters, digits, _), such as asyncormapi_changes.")]
    public string Publication { get; set; } = "asyncormapi_changes";

    [Range(1, 10_000_000, ErrorMessage = "ChangeFeed:Window must be an integer from 1 to 10,000,000 (default 10,000): the changes kept for resumes.")]
    public int Window { get; set; } = 10_000;

    [Range(1024L, long.MaxValue, ErrorMessage = "ChangeFeed:WindowBytes must be at least 1024 (default 67108864, 64 MiB): the bytes kept for resumes.")]
    public long WindowBytes { get; set; } = 64L * 1024 * 1024;

    [Range(1, int.MaxValue, ErrorMessage = "ChangeFeed:MaxLag must be a positive integer (default 5,000): how far behind a subscriber may fall.")]
    public int MaxLag { get; set; } = 5_000;

    [Range(1, 86_400, ErrorMessage = "ChangeFeed:IdleSeconds must be from 1 to 86,400 (default 300): how long the reader outlives its last subscriber.")]
    public int IdleSeconds { get; set; } = 300;

    [Range(1, 3_600, ErrorMessage = "ChangeFeed:HeartbeatSeconds must be from 1 to 3,600 (default 15): how often an idle stream gets an empty event.")]
    public int HeartbeatSeconds { get; set; } = 15;

    [Range(1, 1_000_000, ErrorMessage = "ChangeFeed:SubscribersPerClient must be from 1 to 1,000,000 (default 64).")]
    public int SubscribersPerClient { get; set; } = 64;

    [Range(1, 1_000_000, ErrorMessage = "ChangeFeed:MaxSubscribers must be from 1 to 1,000,000 (default 1,000).")]
    public int MaxSubscribers { get; set; } = 1_000;
}
