"""Device and dtype choice: cuda > mps > cpu, fp16 on CUDA, fp32 elsewhere."""
from __future__ import annotations

import torch

from .errors import StudioError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, or the best available one (cuda > mps > cpu)."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise StudioError(f"Unknown device '{requested}': use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StudioError(f"Device '{requested}' was asked for but CUDA is not available here: use --device cpu or auto.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StudioError("Device 'mps' was asked for but is not available here: use --device cpu or auto.")
    return device


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere, unless ``requested`` is one of fp32/fp16/bf16."""
    if requested in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested not in DTYPES:
        raise StudioError(f"Unknown precision '{requested}': use auto, {', '.join(DTYPES)}.")
    if requested == "fp16" and device.type == "cpu":
        raise StudioError("fp16 is not supported on the CPU: use --dtype fp32 (or bf16).")
    return DTYPES[requested]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))
