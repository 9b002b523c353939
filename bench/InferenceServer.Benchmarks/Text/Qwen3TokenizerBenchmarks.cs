using BenchmarkDotNet.Attributes;
using InferenceServer.Models.Text;

namespace InferenceServer.Benchmarks.Text;

/// <summary>
/// Tokenizer throughput on a realistic prompt mix (short and long English, other scripts, punctuation, digits):
/// the full klein path per prompt (template, added tokens, NFC, pre-tokenizer, BPE, pad/truncate to 512).
/// Time per operation is per prompt. Run: --filter '*Qwen3Tokenizer*'
/// </summary>
[MemoryDiagnoser]
public class Qwen3TokenizerBenchmarks
{
    static readonly string[] prompts =
    [
        "a cat",
        "A photo of a golden retriever puppy playing in the snow, shallow depth of field, 85mm lens.",
        "An ultra-detailed, cinematic wide shot of a bustling futuristic marketplace at dusk, neon signs reflecting on rain-soaked cobblestones, vendors selling glowing fruit, drones weaving between hanging lanterns, and a lone traveler in a red cloak walking toward the camera.",
        "Poster for a jazz festival: bold sans-serif title \"BLUE NOTES 2025\", saxophone silhouette, teal and orange palette, grain texture.",
        "Isometric 3D render of a tiny island with a lighthouse, low-poly style, soft pastel colors, 4k",
        "一只在樱花树下睡觉的橘猫，水彩画风格，柔和的光线",
        "富士山と桜、朝焼け、浮世絵風",
        "서울의 밤거리, 네온사인, 비 오는 날, 영화 같은 분위기",
        "Café au lait on a marble table, croissant, morning light — editorial food photography",
        "Портрет пожилого рыбака в тумане, масляная живопись",
        "Replace the background with a sunny beach; keep the person's face and clothing unchanged. Make the sky slightly pink.",
        "Product shot: matte black wireless headphones on a concrete pedestal, studio lighting, reflections, 8K, ultra sharp",
        string.Join(" ", Enumerable.Repeat("A serene mountain lake at sunrise with mist over the water and pine trees on the shore.", 12)),
        "emoji sticker set: 🐱 😀 🎉 🌈, flat vector, white outline",
        "Logo for \"Nova Robotics\" — minimalist, geometric, #1E90FF on white",
        "watercolor map of an imaginary city, hand-lettered street names, compass rose, vintage paper",
    ];

    Qwen3Tokenizer tokenizer = null!;

    [GlobalSetup]
    public void Setup() => tokenizer = Qwen3Tokenizer.Load();

    [Benchmark(OperationsPerInvoke = 16)]
    public int EncodePrompt_klein_512()
    {
        int n = 0;
        foreach (var p in prompts) n += tokenizer.EncodePrompt(p, 512).Length;
        return n;
    }
}
