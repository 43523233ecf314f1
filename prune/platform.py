"""Device choice, seeding and provenance: decided here, nowhere else."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform as _platform
import random
from pathlib import Path

import numpy as np
import torch

from prune.errors import PruneBenchError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda`` into a torch.device, with a one-line error for the impossible."""
    if name not in DEVICES:
        raise PruneBenchError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PruneBenchError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(name)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()


@functools.lru_cache(maxsize=None)
def cache_bytes(level: int, default: int) -> int:
    """The size of this CPU's level-``level`` data cache (Linux sysfs), else ``default``."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.exists() else []:
        try:
            if int((index / "level").read_text()) == level and (index / "type").read_text().strip() != "Instruction":
                text = (index / "size").read_text().strip().upper()
                return int(text[:-1]) * (1 << 10 if text.endswith("K") else 1 << 20) if text[-1] in "KM" else int(text)
        except (OSError, ValueError):
            continue
    return default


def cpu_flags() -> set[str]:
    """The CPU's feature flags (from /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_of(flags: set[str] | list[str]) -> str:
    """The widest vector instruction set in a CPU's ``flags``: "avx512+amx", "avx512", "avx2", "sve", "neon"
    or "baseline"."""
    flags = set(flags)
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "avx512+amx" if "amx_tile" in flags else "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "sve" if "sve" in flags else "neon" if "asimd" in flags else "baseline"


def cpu_kind() -> str:
    """What a figure measured on this CPU needs beside it: model name and instruction set."""
    return f"{cpu_name()} ({isa_of(cpu_flags())})"


def gpu_name() -> str | None:
    """The first CUDA GPU's name, or None where there is none."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def provenance() -> dict:
    """Machine, versions and date: what every saved result carries."""
    import torchvision

    return {
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "torchvision": str(torchvision.__version__),
        "numpy": np.__version__,
        "python": _platform.python_version(),
        "cpu": cpu_name(),
        "cpu_isa": isa_of(cpu_flags()),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_name(),
        "cuda": torch.version.cuda,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
