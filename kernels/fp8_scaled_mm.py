# TorchScript, compiled once at start-up by InferenceServer.Models.Quantization.Fp8ScaledMm (torch.jit.compile).
# FP8 linear on the FP8 tensor cores (Hopper / Ada): the activation is quantized to E4M3 with one dynamic scale per
# tensor, the weight is stored as E4M3 codes (uint8) with one float32 scale per tensor, and torch._scaled_mm multiplies
# them with float32 accumulation, writing the activation's dtype. No bias (FLUX.2 has none).
# Fallback when this does not compile or the probe fails: QuantizedLinear dequantizes the weight per layer.


def fp8_linear(x: torch.Tensor, w_codes: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    # x: [..., K] bf16/fp16/fp32; w_codes: [N, K] uint8 (E4M3FN codes); w_scale: [] or [1] float32
    k = x.size(-1)
    x2 = x.reshape(-1, k)                                                     # [M, K]
    amax = x2.abs().amax().to(torch.float32).clamp(min=1e-12)
    x_scale = (amax / 448.0).reshape(1)                                       # [1] f32
    xq = (x2.to(torch.float32) / x_scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    w = w_codes.view(torch.float8_e4m3fn)                                     # [N, K]
    y = torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale.reshape(1).to(torch.float32), out_dtype=x.dtype)
    out_shape = list(x.shape[:-1])
    out_shape.append(w_codes.size(0))
    return y.reshape(out_shape)                                               # [..., N]


def fp8_available(device: torch.device) -> bool:
    # True when torch._scaled_mm runs an E4M3 x E4M3 product on this device.
    a = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
    b = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
    one = torch.ones(1, device=device)
    y = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    return bool((y.float() == 32.0).all().item())
