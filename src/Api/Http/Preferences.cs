using AsyncOrmApi.Data;

namespace AsyncOrmApi.Http;

/// <summary>The request header <c>Prefer</c> (RFC 7240): preferences the API does not know are ignored, as the RFC says.</summary>
public static class Preferences
{
    public const string Header = "Prefer";
    public const string AppliedHeader = "Preference-Applied";
    public const string Merge = "resolution=merge-duplicates";
    public const string Ignore = "resolution=ignore-duplicates";

    /// <summary>What a <c>POST /a</c> does with ids that exist: the last <c>resolution</c> preference that names one.</summary>
    /// <param name="prefer">The request's Prefer headers, joined with commas.</param>
    public static Resolution ResolutionOf(string? prefer)
    {
        var resolution = Resolution.None;
        foreach (var preference in (prefer ?? "").Split(','))
        {
            // A preference is token[=value] and optional ;parameters; the value may be quoted.
            var pair = preference.Split(';')[0].Trim().Replace("\"", "");
            if (pair.Equals(Merge, StringComparison.OrdinalIgnoreCase))
                resolution = Resolution.MergeDuplicates;
            else if (pair.Equals(Ignore, StringComparison.OrdinalIgnoreCase))
                resolution = Resolution.IgnoreDuplicates;
        }
        return resolution;
    }

    public static string Applied(Resolution resolution) => resolution == Resolution.MergeDuplicates ? Merge : Ignore;
}
