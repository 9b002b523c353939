namespace InferenceServer.Server.Lora;

/// <summary>An adapter a request names: a name in the adapter folder and its scale.</summary>
public sealed record RequestedLora(string Name, double Scale = 1.0);
