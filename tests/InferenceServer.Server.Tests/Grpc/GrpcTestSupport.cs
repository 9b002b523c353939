using JobEvent = InferenceServer.Server.Engine.JobEvent;
using JobResult = InferenceServer.Server.Engine.JobResult;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using Google.Protobuf;
using Grpc.Core;
using InferenceServer.Client;
using InferenceServer.Client.V1;
using InferenceServer.Pipeline.Images;
using InferenceServer.Server.Engine;
using InferenceServer.Tests.Serving;
using Microsoft.Extensions.DependencyInjection;

namespace InferenceServer.Tests.Grpc;

/// <summary>What the server saw of one job (by request id): the last step it finished, the step when the call was cancelled, how it ended.</summary>
public sealed class JobTrace
{
    volatile int lastStep;
    public int LastStep { get => lastStep; set => lastStep = value; }
    /// <summary>The last finished step when the call's token fired (client cancel, disconnect, deadline); -1: never fired.</summary>
    public int StepAtCancel { get; set; } = -1;
    public Exception? Error { get; set; }
    public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>The scheduler as the gRPC service sees it, recording each job server-side (steps run, cancel time, outcome).</summary>
public sealed class RecordingGenerator(ImageScheduler inner) : IImageGenerator
{
    public ConcurrentDictionary<string, JobTrace> Jobs { get; } = new();
    public IReadOnlyList<ModelDescriptor> Models => inner.Models;
    public bool Ready => inner.Ready;
    public string Phase => inner.Phase;
    public event Action? ReadinessChanged { add => inner.ReadinessChanged += value; remove => inner.ReadinessChanged -= value; }
    public JobPlan Plan(ImageJobRequest request) => inner.Plan(request);

    public async Task<JobResult> GenerateAsync(ImageJobRequest request, Action<JobEvent>? onEvent = null, CancellationToken cancellationToken = default)
    {
        var trace = Jobs.GetOrAdd(request.RequestId, _ => new JobTrace());
        using var registration = cancellationToken.Register(() => trace.StepAtCancel = trace.LastStep);
        try
        {
            return await inner.GenerateAsync(request, e =>
            {
                if (e is JobEvent.Progress p) trace.LastStep = p.Step;
                onEvent?.Invoke(e);
            }, cancellationToken);
        }
        catch (Exception e)
        {
            trace.Error = e;
            throw;
        }
        finally { trace.Done.TrySetResult(); }
    }

    public static Task<RunningServer> StartServerAsync(Action<Server.Hosting.ServerOptions>? configure = null) =>
        RunningServer.StartAsync(configure, b =>
        {
            b.Services.AddSingleton(s => new RecordingGenerator(s.GetRequiredService<ImageScheduler>()));
            b.Services.AddSingleton<IImageGenerator>(s => s.GetRequiredService<RecordingGenerator>());
        });
}

/// <summary>One server shared by a test class (the tiny model, recording jobs) and a client on it.</summary>
public sealed class GrpcServerFixture : IAsyncLifetime
{
    public RunningServer Server { get; private set; } = null!;
    public InferenceClient Client { get; private set; } = null!;
    public RecordingGenerator Recorder => Server.App.Services.GetRequiredService<RecordingGenerator>();

    public async Task InitializeAsync()
    {
        Server = await RecordingGenerator.StartServerAsync();
        Client = new InferenceClient(Server.GrpcAddress);
    }

    public async Task DisposeAsync()
    {
        Client.Dispose();
        await Server.DisposeAsync();
    }
}

public static class TestImages
{
    static readonly ImageCodec Codec = new();

    /// <summary>A PNG of a smooth gradient (deterministic).</summary>
    public static byte[] Png(int width, int height)
    {
        var rgb = new byte[width * height * 3];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                int i = (y * width + x) * 3;
                (rgb[i], rgb[i + 1], rgb[i + 2]) = ((byte)(x * 255 / width), (byte)(y * 255 / height), 128);
            }
        return ImageCodec.Encode(new RgbImage(width, height, rgb), ImageFormat.Png).Bytes;
    }

    public static InputImage Input(byte[] data) => new() { Data = ByteString.CopyFrom(data) };

    /// <summary>A small, valid PNG whose header claims <paramref name="side"/> x <paramref name="side"/> pixels (IHDR patched, CRC fixed).</summary>
    public static byte[] Bomb(int side)
    {
        var png = Png(16, 16);
        // signature (8) | length (4) "IHDR" (4) width (4) height (4) ... | CRC over type + 13 data bytes at 29.
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(16), side);
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(20), side);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), Crc32(png.AsSpan(12, 17)));
        return png;
    }

    static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }

    /// <summary>Decodes (throws when the bytes are not a valid image) and returns the size.</summary>
    public static (int Width, int Height) Size(ByteString data)
    {
        var image = Codec.Decode(data.ToByteArray());
        return (image.Width, image.Height);
    }

    public static string? Trailer(RpcException e, string key) => e.Trailers.GetValue(key);
}
