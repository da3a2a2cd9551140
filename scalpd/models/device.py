"""Which torch device to use, mixed precision where it helps, and CPU threads.

Preference order for "auto": Intel XPU (PyTorch's native `torch.xpu` backend), then CUDA, then
CPU. Autocast is used only on XPU and CUDA: on CPU, bfloat16 autocast is slower for models this
small and would make CPU training non-reproducible across machines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from scalpd.models.errors import ModelError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "xpu")


def _xpu_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def select_device(preference: str = "auto") -> torch.device:
    """The device for `preference`; an explicit device that is not available is a ModelError."""
    if preference not in DEVICE_CHOICES:
        raise ModelError(
            f"unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}"
        )
    if preference == "auto":
        if _xpu_available():
            return torch.device("xpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if preference == "xpu" and not _xpu_available():
        raise ModelError("device xpu asked for but torch.xpu.is_available() is false")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda asked for but torch.cuda.is_available() is false")
    return torch.device(preference)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`, or None where training stays in float32 (CPU)."""
    if device.type == "xpu":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def set_threads(n_threads: int | None) -> None:
    """Set torch's intra-op threads (process-wide). One thread gives the lowest single-bar
    latency: a one-bar step is too small to split, and waking a second thread costs more."""
    if n_threads is not None and n_threads > 0 and torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)
