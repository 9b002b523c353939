using System.Text;

namespace InferenceServer.Reliability;

/// <summary>
/// JSON bodies for /v1/images/generations and /v1/images/edits built as raw text (never through a serializer), so
/// that structure, types, numbers and encodings can be anything: the base request with one or more fields replaced
/// from per-field tables of wrong types and extremes, broken structure, and invalid UTF-8 / lone surrogates.
/// </summary>
public static class JsonMutations
{
    /// <summary>A small valid request (64x64, one step): what most mutations start from, so a case that stays valid is cheap.</summary>
    public static List<(string Key, string Raw)> Base() =>
    [
        ("prompt", "\"fuzz\""), ("size", "\"64x64\""), ("steps", "1"), ("seed", "1"), ("response_format", "\"b64_json\""),
    ];

    static readonly string[] AnyType = ["null", "true", "false", "0", "-1", "1.5", "\"\"", "\"x\"", "[]", "{}", "[1,2]", "{\"a\":1}", "1e400", "-0"];

    /// <summary>Per field: values of the wrong type and edge values. Valid large sizes are left out on purpose (a CPU run would take minutes, not a defect).</summary>
    static readonly Dictionary<string, string[]> Extremes = new()
    {
        ["prompt"] = ["\"\"", "\" \"", "\"\\u0000\"", "\"\\n\\r\\t\"", "\"\\ud83d\\ude00\"", "\"a\\\\b\\\"c\""],
        ["size"] = ["\"0x0\"", "\"-64x64\"", "\"64x\"", "\"x64\"", "\"64*64\"", "\"99999999999x64\"", "\"64x64x64\"", "\"auto\"", "\"1x1\"", "\"4097x64\"", "\"64X64\"", "\" 64x64 \"", "\"NaNxNaN\"", "\"1e3x64\"", "\"64x-0\"", "\"64:64\"", "\"0x\"", "\"\""],
        ["n"] = ["0", "-1", "11", "1e308", "9223372036854775808", "-9223372036854775809", "2147483648", "1.0", "1.5", "\"2\"", "10"],
        ["steps"] = ["0", "-1", "101", "100", "1000000000", "2147483647", "4294967297", "1e2", "0.5", "\"4\""],
        ["seed"] = ["-1", "-2", "9007199254740992", "9007199254740993", "18446744073709551616", "1e20", "-0", "0", "1.5", "\"7\""],
        ["guidance"] = ["1e309", "-1e309", "1e38", "-1", "0", "3.5", "1e-320", "\"NaN\"", "\"Infinity\""],
        ["output_compression"] = ["-1", "0", "101", "100", "1e10", "50"],
        ["output_format"] = ["\"png\"", "\"jpeg\"", "\"jpg\"", "\"webp\"", "\"avif\"", "\"gif\"", "\"bmp\"", "\"PNG\"", "\"\"", "\"../png\""],
        ["response_format"] = ["\"url\"", "\"b64_json\"", "\"B64_JSON\"", "\"base64\"", "\"\""],
        ["aspect_ratio"] = ["\"0:0\"", "\"1:0\"", "\"-1:1\"", "\"1e308:1\"", "\"NaN:1\"", "\"16:9\"", "\"1:1000000\"", "\":\"", "\"1:1:1\""],
        ["resolution"] = ["\"1K\"", "\"8K\"", "\"0K\"", "\"-1K\"", "\"1k\"", "\"K\""],
        ["model"] = ["\"tiny\"", "\"nope\"", "\"../../etc/passwd\"", "\"\"", "\"\\u0000\""],
        ["loras"] = ["[]", "\"x\"", "[{}]", "[{\"name\":5}]", "[{\"name\":\"../../etc/passwd\"}]", "[{\"name\":\"a\",\"scale\":1e308}]", "[{\"name\":\"a\",\"scale\":\"x\"}]", "[null]", "{\"name\":\"a\"}"],
        ["sequential_image_generation"] = ["\"disabled\"", "\"auto\"", "1"],
        ["stream"] = ["true", "false", "\"yes\""],
        ["image"] = ["\"\"", "\"not base64!\"", "\"data:image/png;base64,\"", "\"data:;base64,AAAA\"", "\"data:image/png,raw\"", "[]", "[1]", "[\"\", \"\"]", "{}", "\"http://127.0.0.1:1/x.png\"", "\"AAAA\""],
        ["user"] = ["5", "\"u\""],
        ["quality"] = ["\"hd\"", "7"],
    };

    public static FuzzCase Mutate(Random rng, string path)
    {
        var fields = Base();
        var names = new List<string>();
        int count = rng.Next(1, 4);
        for (int i = 0; i < count; i++)
        {
            var keys = Extremes.Keys.ToArray();
            string key = keys[rng.Next(keys.Length)];
            string raw = rng.Next(4) == 0 ? AnyType[rng.Next(AnyType.Length)] : Extremes[key][rng.Next(Extremes[key].Length)];
            fields.RemoveAll(f => f.Key == key);
            fields.Add((key, raw));
            names.Add($"{key}={raw}");
        }
        if (rng.Next(6) == 0) { fields.Add(fields[0]); names.Add("duplicate key"); }
        if (rng.Next(8) == 0) { fields.RemoveAll(f => f.Key == "prompt"); names.Add("no prompt"); }
        return Json("json-fields", string.Join(", ", names), path, Object(fields));
    }

    public static FuzzCase Structure(Random rng, string path)
    {
        string valid = Encoding.UTF8.GetString(Object(Base()));
        (string name, string body) = rng.Next(16) switch
        {
            0 => ("truncated", valid[..rng.Next(0, valid.Length)]),
            1 => ("array root", "[" + valid + "]"),
            2 => ("string root", "\"prompt\""),
            3 => ("number root", "42"),
            4 => ("null root", "null"),
            5 => ("trailing garbage", valid + "}}garbage"),
            6 => ("empty body", ""),
            7 => ("nested arrays 100000 deep", new string('[', 100_000) + new string(']', 100_000)),
            8 => ("nested objects 5000 deep in a field", "{\"prompt\":\"x\",\"loras\":" + string.Concat(Enumerable.Repeat("{\"a\":", 5000)) + "1" + new string('}', 5000) + "}"),
            9 => ("unquoted keys", "{prompt:\"x\"}"),
            10 => ("single quotes", "{'prompt':'x'}"),
            11 => ("comments", "{/* c */\"prompt\":\"x\"}"),
            12 => ("BOM prefix", "\uFEFF" + valid),
            13 => ("NUL bytes", "{\"prompt\":\"x\"\0\0}"),
            14 => ("10 MB of whitespace", new string(' ', 10 << 20) + valid),
            // The valid fields ride along: a body of only a prompt is a default-size (1024x1024) generation, minutes of CPU.
            _ => ("100000 keys", "{" + string.Join(",", Enumerable.Range(0, 100_000).Select(i => $"\"k{i}\":{i}")) + "," + valid[1..]),
        };
        return Json("json-structure", name, path, Encoding.UTF8.GetBytes(body));
    }

    /// <summary>Invalid UTF-8 sequences spliced into a string value or a key, and JSON-escaped lone surrogates.</summary>
    public static FuzzCase Utf8(Random rng, string path)
    {
        byte[][] invalid = [[0xFF], [0xC3, 0x28], [0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xF4, 0x90, 0x80, 0x80], [0x80], [0xE2, 0x82]];
        string[] escapes = ["\\ud800", "\\udc00", "\\ud800\\ud800", "\\udfff x", "\\ud83d", "\\u0000", "\\uFFFF", "\\uD800\\u0041"];
        string field = new[] { "prompt", "size", "model", "output_format", "response_format", "image", "aspect_ratio" }[rng.Next(7)];
        if (rng.Next(2) == 0)
        {
            byte[] bad = invalid[rng.Next(invalid.Length)];
            bool inKey = rng.Next(4) == 0;
            var body = new MemoryStream();
            body.Write(Encoding.UTF8.GetBytes($"{{\"prompt\":\"fuzz\",\"size\":\"64x64\",\"steps\":1,\"response_format\":\"b64_json\",\"{(inKey ? "k" : field)}"));
            if (inKey) body.Write(bad);
            body.Write("\":\"a"u8);
            if (!inKey) body.Write(bad);
            body.Write("b\"}"u8);
            return Json("utf8", $"invalid UTF-8 {Convert.ToHexString(bad)} in {(inKey ? "a key" : field)}", path, body.ToArray());
        }
        string esc = escapes[rng.Next(escapes.Length)];
        var fields = Base();
        fields.RemoveAll(f => f.Key == field);
        fields.Add((field, $"\"a{esc}b\""));
        return Json("utf8", $"escape {esc} in {field}", path, Object(fields));
    }

    /// <summary>Oversized values: long prompts, many lora entries, a huge number literal, a 20 MB string.</summary>
    public static FuzzCase Oversized(Random rng, string path)
    {
        var fields = Base();
        (string name, string key, string raw) = rng.Next(6) switch
        {
            0 => ("prompt of 8001 chars", "prompt", $"\"{new string('a', 8001)}\""),
            1 => ("prompt of 1 MB", "prompt", $"\"{new string('b', 1 << 20)}\""),
            2 => ("1000 loras", "loras", "[" + string.Join(",", Enumerable.Repeat("{\"name\":\"a\"}", 1000)) + "]"),
            3 => ("a 100000-digit number", "seed", new string('9', 100_000)),
            4 => ("20 MB model name", "model", $"\"{new string('m', 20 << 20)}\""),
            _ => ("prompt of 8000 multi-byte chars", "prompt", $"\"{string.Concat(Enumerable.Repeat("\u00e9", 8000))}\""),
        };
        fields.RemoveAll(f => f.Key == key);
        fields.Add((key, raw));
        return Json("oversized", name, path, Object(fields));
    }

    public static byte[] Object(IEnumerable<(string Key, string Raw)> fields) =>
        Encoding.UTF8.GetBytes("{" + string.Join(",", fields.Select(f => $"\"{f.Key}\":{f.Raw}")) + "}");

    static FuzzCase Json(string cls, string name, string path, byte[] body) =>
        new() { Class = cls, Name = name, Transport = Transport.Http, Path = path, ContentType = "application/json", Body = body };
}
