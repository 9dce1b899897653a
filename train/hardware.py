"""What the processor is and whether bf16 pays on it: read once from /proc/cpuinfo.

A CPU's bf16 autocast is only faster than float32 where the cores have bf16 units (Intel's
AMX-BF16 tiles, or AVX512-BF16 dot products): measured 2.7x at 32 px on AMX. Elsewhere
(an AMD EPYC without them, say) oneDNN emulates bf16 and gains little or loses, so the
trainer keeps float32 there.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # in the order they pay


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor; empty where /proc/cpuinfo is not there."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return "", frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name, flags


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_bf16_units() -> tuple[str, ...]:
    """The bf16 units this CPU has, by their /proc/cpuinfo flag ('amx_bf16', 'avx512_bf16'); () if none."""
    flags = _cpuinfo()[1]
    return tuple(f for f in BF16_FLAGS if f in flags)


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast is the faster precision on ``device``."""
    return device.type == "cuda" or bool(cpu_bf16_units())


def processor_name(device: torch.device) -> str:
    """The processor's own name: the GPU's, or the CPU's model name from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def precision_name(amp: str, device: torch.device) -> str:
    """The training step's precision as the plan line and the card name it."""
    if amp != "bfloat16":
        return "float32"
    if device.type == "cuda":
        return "bf16 autocast"
    units = cpu_bf16_units()
    if units:
        return f"bf16 autocast ({', '.join(units)})"
    return "float32 (this CPU has no bf16 units: neither amx_bf16 nor avx512_bf16)"
