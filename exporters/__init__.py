"""Turn prunebench checkpoints into other formats: ONNX (``exporters.onnx``) and compact sparse files (``exporters.sparse``).

Each exporter is a library function that does the work and a thin ``main``
around it (options derived from its settings dataclass by ``prune.cli.add_settings``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

from prune.errors import PruneBenchError


def gzip_size(path: str | Path) -> int:
    """Bytes the file takes after gzip (level 6), read in chunks so large files do not sit in memory twice."""
    import zlib

    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def run_cli(work: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a CLI body, turning ``PruneBenchError`` into ``error: ...`` on stderr and exit status 2."""
    try:
        return work(argv)
    except PruneBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"
