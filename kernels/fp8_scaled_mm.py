# TorchScript, compiled once at start-up by InferenceServer.Models.Quantization.Fp8ScaledMm (torch.jit.compile).
# FP8 linear on the FP8 tensor cores (Hopper / Ada): the activation is quantized to E4M3 with one dynamic scale per
# tensor, the weight is stored as E4M3 codes (uint8) with one float32 scale per tensor, and torch._scaled_mm multiplies
# them with float32 accumulation, writing the activation's dtype. No bias (FLUX.2 has none).
# Fallback when this does not compile or the probe fails: QuantizedLinear dequantizes the weight per layer.
# Compiled without Python, so dtypes are ScalarType numbers: 6 float32, 15 bfloat16, 24 float8_e4m3fn.


def fp8_weight(w: Tensor) -> Tensor:
    # w: the exact values of E4M3 codes (bf16/f32) -> a float8_e4m3fn tensor (exact). Run once per layer: TorchScript
    # cannot reinterpret the uint8 codes (view(dtype) is not a TorchScript builtin) and TorchSharp has no float8 type.
    return w.to(24)


def fp8_linear(x: Tensor, w: Tensor, w_scale: Tensor) -> Tensor:
    # x: [..., K] bf16/fp16/fp32; w: [N, K] float8_e4m3fn (from fp8_weight); w_scale: [] or [1] float32
    k = x.size(-1)
    x2 = x.reshape([-1, k])                                                   # [M, K]
    amax = x2.abs().amax().to(6).clamp(min=1e-12)
    x_scale = (amax / 448.0).reshape([1])                                     # [1] f32
    xq = (x2.to(6) / x_scale).clamp(-448.0, 448.0).to(24)                     # [M, K] e4m3
    y = torch._scaled_mm(xq, w.t(), x_scale, w_scale.reshape([1]).to(6), None, None, x.dtype)
    out_shape = list(x.shape[:-1])
    out_shape.append(w.size(0))
    return y.reshape(out_shape)                                               # [..., N]


def fp8_available(like: Tensor) -> Tensor:
    # True when torch._scaled_mm runs an E4M3 x E4M3 product on like's device.
    a = torch.ones([16, 32], device=like.device).to(24)
    one = torch.ones([1], device=like.device)
    y = torch._scaled_mm(a, a.t(), one, one, None, None, 15)
    return (y.to(6) == 32.0).all()                                            # bool [] tensor
