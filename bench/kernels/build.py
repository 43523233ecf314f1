"""Building the C++ kernels for one instruction set, and which instruction sets this CPU can run.

``PRUNEBENCH_ISA`` selects the build: ``native`` (the default: ``-march=native``),
``avx2`` or ``avx512`` (those instructions only, tuned for this CPU). Each build is
compiled once into torch's extension cache under a name that carries its instruction
set, flags, CPU and source, and loaded from there afterwards; several builds can be
loaded in one process (``using`` switches between them, for tests).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import Iterator

from prune.errors import PruneBenchError

SOURCE = Path(__file__).with_name("sparse_conv.cpp")
ISA_ENV = "PRUNEBENCH_ISA"
ISAS = ("native", "avx2", "avx512")
BASE_FLAGS = ["-O3", "-std=c++17", "-pthread"]  # no -ffast-math: it splits FMAs apart
ISA_FLAGS = {
    "native": ["-march=native"],
    "avx2": ["-mavx2", "-mfma", "-mtune=native"],
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mtune=native"],
}
# /proc/cpuinfo flags each explicit instruction set needs
ISA_CPU_FLAGS = {"avx2": {"avx2", "fma"}, "avx512": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}}

_override: str | None = None  # set by ``using``; else the environment decides


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``prune.platform.cpu_flags``), else what torch detected."""
    from prune.platform import cpu_flags as read_flags

    found = read_flags()
    if found:
        return frozenset(found)
    import torch

    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    if capability == "AVX512":
        return frozenset(ISA_CPU_FLAGS["avx512"])
    return frozenset(ISA_CPU_FLAGS["avx2"]) if capability == "AVX2" else frozenset()


def cpu_isas() -> list[str]:
    """The instruction sets this CPU can run: ``native`` always, then each explicit one it has."""
    return ["native"] + [isa for isa, need in ISA_CPU_FLAGS.items() if need <= cpu_flags()]


def widest(isa: str) -> str:
    """What a build for ``isa`` vectorises with on this CPU: "avx512", "avx2" or "generic"."""
    if isa != "native":
        return isa
    return next((i for i in ("avx512", "avx2") if ISA_CPU_FLAGS[i] <= cpu_flags()), "generic")


def check_isa(isa: str) -> str:
    """``isa`` if this CPU can run it, else a one-line PruneBenchError naming what it can run."""
    if isa not in ISAS:
        raise PruneBenchError(f"{ISA_ENV}={isa}: unknown instruction set; give one of {', '.join(ISAS)}")
    if isa not in cpu_isas():
        raise PruneBenchError(f"{ISA_ENV}={isa}: this CPU cannot run {isa} code; it can run {', '.join(cpu_isas())}")
    return isa


def selected_isa() -> str:
    """The instruction set the kernels are built for now: ``using``'s, else ``PRUNEBENCH_ISA``, else native."""
    return check_isa(_override or os.environ.get(ISA_ENV, "").strip().lower() or "native")


@contextlib.contextmanager
def using(isa: str | None) -> Iterator[None]:
    """Run the kernels of the ``isa`` build inside the block (None: leave the selection as it is)."""
    global _override
    if isa is None:
        yield
        return
    before, _override = _override, check_isa(isa)
    try:
        yield
    finally:
        _override = before


def flags(isa: str) -> list[str]:
    return BASE_FLAGS + ISA_FLAGS[isa]


def build_name(isa: str) -> str:
    """The extension's name: a hash of source, flags and CPU (flags tune for it), so no stale or foreign build loads."""
    from prune.platform import cpu_name

    digest = hashlib.sha1((SOURCE.read_text() + " ".join(flags(isa)) + cpu_name()).encode()).hexdigest()[:10]
    return f"prunebench_sparse_conv_{isa}_{digest}"


@functools.lru_cache(maxsize=None)
def _load(isa: str):
    """Build (first use on this machine, about 15 s) or load the cached extension for ``isa``."""
    import shutil
    import warnings

    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja wheel's binary sits beside python, often not on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # load_inline then says ninja is missing, and kernel_module() passes that on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cpp_extension.load_inline(
            name=build_name(isa),
            cpp_sources=[SOURCE.read_text()],
            extra_cflags=flags(isa),
            extra_ldflags=["-pthread"],
            no_implicit_headers=True,  # pybind11 only: a much faster build than torch/extension.h
            verbose=bool(os.environ.get("PRUNEBENCH_VERBOSE_BUILD")),
        )


_loaded: dict[str, object] = {}  # what was asked for (an ISA, or the environment's raw value) -> its module


def kernel_module(isa: str | None = None):
    """The compiled kernels of ``isa`` (default: ``selected_isa()``), or a one-line PruneBenchError saying why
    they cannot be built here."""
    asked = isa or _override or os.environ.get(ISA_ENV, "")
    module = _loaded.get(asked)
    if module is not None:  # the layout's copies call this in every pass: no checks once loaded
        return module
    isa = check_isa(isa) if isa else selected_isa()
    try:
        module = _loaded[asked] = _load(isa)
        return module
    except Exception as e:  # compiler missing, ninja missing, build error: all mean "cannot build here"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PruneBenchError(
            f"cannot build the sparse convolution kernel ({first[:160]}): it needs g++ and ninja (pip install ninja)"
        ) from None


def built_isa() -> str:
    """What the selected build vectorises with, as the module says ("avx512", "avx2" or "generic")."""
    return str(kernel_module().isa)


def vector_registers() -> int:
    """How many 16-float vectors the selected build keeps in registers: 32 with AVX-512, 8 without."""
    return int(kernel_module().vector_registers)


def unavailable() -> str | None:
    """Why the kernels cannot be built here, or None. An instruction set this CPU lacks is an error, not a reason."""
    selected_isa()
    try:
        kernel_module()
    except PruneBenchError as e:
        return str(e)
    return None


def rest_threads() -> None:
    """Let the kernels' idle threads sleep at once (no spinning) until their next call: for when another
    engine's threads take the cores next."""
    kernel_module().rest()
