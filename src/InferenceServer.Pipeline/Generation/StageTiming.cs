namespace InferenceServer.Pipeline.Generation;

/// <summary>The stages of a generation, in the order they run.</summary>
public enum Stage { ReferenceDecode, TextEncode, ReferenceEncode, Denoise, Preview, Decode, ImageEncode }

/// <summary>
/// Wall time of one stage of one request: <see cref="Step"/> is set for denoise and preview entries (one per step),
/// <see cref="Images"/> for the images it covers (the denoise step of a request covers all its images at once).
/// </summary>
public sealed record StageTiming(Stage Stage, double Milliseconds, int? Step = null, IReadOnlyList<int>? Images = null)
{
    /// <summary>snake_case stage name as the APIs and metrics spell it ("text_encode").</summary>
    public string Name => StageNames.Of(Stage);

    /// <summary>For tables: "denoise[0,1].step2", "decode[1]", "text_encode".</summary>
    public override string ToString() =>
        Name + (Images is { Count: > 0 } ? $"[{string.Join(",", Images)}]" : "") + (Step is { } s ? $".step{s}" : "");
}

/// <summary>The one place stage names are spelled.</summary>
public static class StageNames
{
    public static string Of(Stage stage) => stage switch
    {
        Stage.ReferenceDecode => "reference_decode",
        Stage.TextEncode => "text_encode",
        Stage.ReferenceEncode => "reference_encode",
        Stage.Denoise => "denoise",
        Stage.Preview => "preview",
        Stage.Decode => "decode",
        Stage.ImageEncode => "image_encode",
        _ => throw new ArgumentOutOfRangeException(nameof(stage), stage, null),
    };
}
