"""Inference dtype choice: ``fp32``, ``bf16`` or ``auto`` (bf16 only where the hardware runs it fast).

Why a module of its own: ``index``, ``eval`` and the Python ``clipvip.load(..., dtype=...)`` must resolve
``auto`` the same way, and the rule is a hardware question that tests need to answer with a fake
``/proc/cpuinfo``.

The rule for ``auto``:

* CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and later), else fp32;
* CPU: bf16 when the CPU has AMX-BF16 (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``) in its
  ``/proc/cpuinfo`` flags: oneDNN then runs bf16 matmuls natively (measured 2.7x faster than fp32 on an
  AMX machine, issue 12). Without them torch emulates bf16 by converting to fp32 around every matmul,
  which is *slower* than fp32 (docs/benchmarks.md), so ``auto`` stays fp32. No ``/proc/cpuinfo`` (macOS,
  Windows) also means fp32: we only switch precision where we have evidence it pays.
* any other device (mps, xpu, ...): fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPE_CHOICES = ("fp32", "bf16", "auto")
_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | Path | None = None) -> set[str]:
    """The x86 feature flags of the first CPU in ``cpuinfo`` (default ``/proc/cpuinfo``); empty if unreadable
    or not x86 (aarch64 lists ``Features`` instead, and is left at fp32 until measured).

    ``cpuinfo`` may be the file's text or a path (tests pass a fake one).
    """
    if cpuinfo is None:
        cpuinfo = CPUINFO
    if isinstance(cpuinfo, Path):
        try:
            cpuinfo = cpuinfo.read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_has_fast_bf16(cpuinfo: str | Path | None = None) -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (native bf16 dot products)."""
    return any(flag in cpu_flags(cpuinfo) for flag in CPU_BF16_FLAGS)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``, ``torch.float32`` -> ``"fp32"`` (the names the CLI uses)."""
    for name, value in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == value:
            return name
    raise ValueError(f"unsupported inference dtype {dtype}; choose one of fp32, bf16")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu", *,
                  cpuinfo: str | Path | None = None) -> torch.dtype:
    """The ``torch.dtype`` to encode with on ``device`` for a user's ``fp32`` / ``bf16`` / ``auto`` (or a dtype).

    ``None`` means fp32 (the default everywhere, so results do not change under a user's feet). An explicit
    ``bf16`` is honoured on any device, even where it is slow. Raises ``ValueError`` naming the choices.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        dtype_name(dtype)  # validates
        return dtype
    key = str(dtype).strip().lower()
    if key == "auto":
        return torch.bfloat16 if auto_prefers_bf16(device, cpuinfo=cpuinfo) else torch.float32
    if key not in _NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    return _NAMES[key]


def auto_prefers_bf16(device: str | torch.device = "cpu", *, cpuinfo: str | Path | None = None) -> bool:
    """Whether ``auto`` picks bf16 on ``device`` (module doc for the rule)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return cpu_has_fast_bf16(cpuinfo)
    return False
