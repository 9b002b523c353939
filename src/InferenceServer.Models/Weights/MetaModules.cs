using System.Reflection;
using TorchSharp;
using static TorchSharp.torch;

namespace InferenceServer.Models.Weights;

/// <summary>
/// Modules built on the <c>meta</c> device (shapes and dtypes, no memory, no initialisation) and then given real,
/// uninitialised storage to load a checkpoint into: PyTorch's <c>to_empty</c>. Building klein-4B's transformer on the
/// CPU spent 49 s here initialising 4 B parameters (kaiming-uniform) that the checkpoint then overwrote; built on meta and
/// materialized, the same step takes milliseconds, and the storage costs nothing until the load writes it.
/// </summary>
public static class MetaModules
{
    /// <summary>The device a module is built on to have no storage at all.</summary>
    public static Device Meta { get; } = new(DeviceType.META);

    static readonly MethodInfo RegisterParameter = typeof(nn.Module).GetMethod("ConditionallyRegisterParameter",
        BindingFlags.Instance | BindingFlags.NonPublic, [typeof(string), typeof(TorchSharp.Modules.Parameter)])
        ?? throw new MissingMethodException("TorchSharp Module.ConditionallyRegisterParameter(string, Parameter)");
    static readonly MethodInfo RegisterBuffer = typeof(nn.Module).GetMethod("ConditionallyRegisterBuffer",
        BindingFlags.Instance | BindingFlags.NonPublic, [typeof(string), typeof(Tensor), typeof(bool)])
        ?? throw new MissingMethodException("TorchSharp Module.ConditionallyRegisterBuffer(string, Tensor, bool)");
    static readonly FieldInfo? DeviceTypeField = typeof(nn.Module).GetField("_deviceType", BindingFlags.Instance | BindingFlags.NonPublic);
    static readonly FieldInfo? DeviceIndexField = typeof(nn.Module).GetField("_deviceIndex", BindingFlags.Instance | BindingFlags.NonPublic);

    /// <summary>True when any parameter or buffer of <paramref name="module"/> is on the meta device.</summary>
    public static bool HasMeta(nn.Module module) =>
        module.parameters().Any(p => p.device_type == DeviceType.META) || module.buffers().Any(b => b.device_type == DeviceType.META);

    /// <summary>
    /// Replaces every meta parameter and buffer of <paramref name="module"/> (and its submodules) by an uninitialised
    /// tensor of the same shape and dtype on <paramref name="device"/>; what is already real is kept. The values are
    /// garbage until a checkpoint is loaded: only loaders call this, and they load every tensor (strict).
    /// Parameters are replaced the way TorchSharp's own <c>Module.to</c> does: through a public property of that name when
    /// the module has one, else in its registry and in the field that holds it.
    /// </summary>
    public static T Materialize<T>(T module, Device device) where T : nn.Module
    {
        foreach (var m in module.named_modules().Select(x => x.module).Prepend(module))
        {
            var type = m.GetType();
            var persistent = m.named_buffers(recurse: false, include_nonpersistent: false).Select(b => b.name).ToHashSet(StringComparer.Ordinal);
            foreach (var (name, p) in m.named_parameters(recurse: false).ToList())
            {
                if (p.device_type != DeviceType.META) continue;
                var real = new TorchSharp.Modules.Parameter(empty(p.shape, p.dtype, device), requires_grad: p.requires_grad);
                Replace(m, type, name, p, real, () => RegisterParameter.Invoke(m, [name, real]));
            }
            foreach (var (name, b) in m.named_buffers(recurse: false).ToList())
            {
                if (b.device_type != DeviceType.META) continue;
                var real = empty(b.shape, b.dtype, device);
                Replace(m, type, name, b, real, () => RegisterBuffer.Invoke(m, [name, real, persistent.Contains(name)]));
            }
            DeviceTypeField?.SetValue(m, device.type);
            DeviceIndexField?.SetValue(m, device.type == DeviceType.CUDA ? device.index : -1);
        }
        return module;
    }

    /// <summary>Puts <paramref name="real"/> where <paramref name="old"/> was: a settable public property, else the registry plus the field.</summary>
    static void Replace(nn.Module m, Type type, string name, Tensor old, Tensor real, Action register)
    {
        var property = type.GetProperty(name, BindingFlags.Instance | BindingFlags.Public);
        if (property is { CanWrite: true } && property.PropertyType.IsInstanceOfType(real))
        {
            property.SetValue(m, real); // TorchSharp's setters dispose the old tensor and register the new one
            return;
        }
        register();
        bool found = false;
        for (var t = type; t is not null && t != typeof(object); t = t.BaseType)
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public | BindingFlags.DeclaredOnly))
                if (f.ComponentName() == name && ReferenceEquals(f.GetValue(m), old))
                {
                    f.SetValue(m, real);
                    found = true;
                }
        // A tensor held elsewhere than a field of its name would keep pointing at meta storage and fail at the first forward.
        if (!found) throw new InvalidOperationException($"{type.Name}.{name}: no field or property holds this tensor; it cannot be materialized");
        old.Dispose();
    }
}
