"""One home for numeric precision: what to train in, what to load weights in, bf16 autocast.

Training uses mixed precision where the hardware computes it natively (`tune.precision`:
auto, bf16, fp16, fp32); weights load in fp32 on CPU (autocast does the bf16 math) and in
bf16 on a bf16 GPU (`model.dtype`); scoring in stage 05 may use bf16 autocast
(`evaluate.precision`, decided in helpers.evaluation_chat).
"""
from __future__ import annotations

import contextlib
from typing import Any

from .config import Config, ConfigError


def training_precision(cfg: Config) -> str:
    """The mixed precision to train in: bf16 / fp16 autocast where the hardware has it, else fp32."""
    import torch

    wanted = cfg.tune.precision
    if torch.cuda.is_available():
        if wanted == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError("tune.precision: bf16 needs an Ampere or newer GPU; use fp16 or auto")
        if wanted != "auto":
            return wanted
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if wanted == "fp16":
        raise ConfigError("tune.precision: fp16 autocast is for GPUs; on CPU use bf16, fp32 or auto")
    if wanted != "auto":
        return wanted
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    import torch

    # torch exposes these checks only as private helpers; absent ones mean "no".
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(c() for c in checks if c is not None)


def weights_dtype(cfg: Config):
    """The dtype to load weights in: model.dtype, else fp32 on CPU (autocast does bf16), bf16 on a bf16 GPU."""
    import torch

    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast(bf16: bool) -> Any:
    """bf16 autocast on the model's device when asked, else a no-op context."""
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
