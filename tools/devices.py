"""Device and precision choice: cuda > mps > cpu; half precision on GPUs, fp32 on CPU."""

from __future__ import annotations

import torch

from tools.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible",
                          "use --device auto or cpu, or install a CUDA build of torch")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but Metal is not available", "use --device auto or cpu")
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """fp16 on CUDA/MPS (bf16 where asked), fp32 on CPU: CPU half-precision kernels are slow or missing."""
    if requested != "auto":
        if requested != "fp32" and device.type == "cpu":
            raise ConfigError(f"dtype {requested} on the CPU is not supported", "use --dtype fp32 or auto on a CPU")
        return _DTYPES[requested]
    return torch.float32 if device.type == "cpu" else torch.float16


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}.get(dtype, str(dtype))
