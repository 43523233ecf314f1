"""Turn prunebench checkpoints into other formats: ONNX (``exporters.onnx``) and compact sparse files (``exporters.sparse``).

Each exporter is a library function that does the work and a thin ``main``
around it. The helpers here derive argparse options from a settings dataclass
so that defaults and help are written once, beside the settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

from prune.errors import PruneBenchError


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: type, types: dict | None = None) -> None:
    """Add ``--field-name`` options for every field of a settings dataclass.

    The help comes from ``field.metadata["help"]``; ``types`` maps a field name to
    a parser for values that are not plain ``int``/``float``/``str`` (e.g. "N|dynamic").
    """
    types = types or {}
    for f in dataclasses.fields(settings_cls):
        if f.metadata.get("cli") is False:
            continue
        default = f.default
        help_text = f.metadata.get("help", "")
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
            continue
        kind = types.get(f.name) or (type(default) if default is not None else str)
        shown = f.metadata.get("shown", default)
        parser.add_argument(flag, type=kind, default=default, help=f"{help_text} (default: {shown})")


def settings_from_args(settings_cls: type, args: argparse.Namespace):
    """Build the settings dataclass from parsed options (fields without an option keep their default)."""
    names = {f.name for f in dataclasses.fields(settings_cls) if f.metadata.get("cli") is not False}
    return settings_cls(**{n: getattr(args, n) for n in names})


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
