"""A compact sparse checkpoint: pruned weights stored as a bitmask plus their nonzero values.

    python -m exporters.sparse model.pt [-o model.sparse.pt] [--force]

Why pruning does not shrink a checkpoint: a dense tensor stores every weight,
zero or not, in 4 bytes. Here each conv/linear weight with zeros becomes a
bit per weight (which are nonzero, ``numpy.packbits``) plus the nonzero values
in order, i.e. numel/8 + 4*nnz bytes instead of 4*numel; that is smaller
whenever more than 1 weight in 32 is zero (CSR with int32 indices needs
8 bytes per nonzero and only wins below ~3% density). Everything else stays
dense. The file is a ``torch.save`` dict that loads with ``weights_only=True``
and decodes to exactly the same dense tensors (``-0.0`` comes back as ``0.0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from exporters import gzip_size, human_bytes, run_cli
from prune.checkpoint import check_writable, load_checkpoint
from prune.errors import PruneBenchError

FORMAT = "prunebench-sparse-bitmask-v1"


def encode(state: dict[str, torch.Tensor]) -> dict:
    """state_dict -> the compact dict (``dense`` tensors and ``sparse`` bitmask+values entries)."""
    dense, sparse = {}, {}
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if t.is_floating_point() and t.dim() >= 2:
            keep = t != 0
            nnz = int(keep.sum())
            if t.numel() / 8 + nnz * t.element_size() < t.numel() * t.element_size():
                bits = np.packbits(keep.reshape(-1).numpy())
                sparse[name] = {
                    "shape": list(t.shape),
                    "bits": torch.from_numpy(bits),
                    "values": t.reshape(-1)[keep.reshape(-1)].clone(),
                }
                continue
        dense[name] = t.clone()
    return {"format": FORMAT, "order": list(state), "dense": dense, "sparse": sparse}


def decode(data: dict) -> dict[str, torch.Tensor]:
    """The compact dict -> the dense state_dict, in the original key order."""
    state = {}
    for name in data["order"]:
        if name in data["dense"]:
            state[name] = data["dense"][name]
            continue
        entry = data["sparse"][name]
        shape = tuple(int(s) for s in entry["shape"])
        numel = int(np.prod(shape)) if shape else 1
        keep = np.unpackbits(entry["bits"].numpy(), count=numel).astype(bool)
        values = entry["values"]
        if int(keep.sum()) != values.numel():
            raise PruneBenchError(f"sparse entry {name}: {int(keep.sum())} bits set but {values.numel()} values")
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[torch.from_numpy(keep)] = values
        state[name] = flat.reshape(shape)
    return state


def is_sparse(data) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT


def load_sparse(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a compact sparse checkpoint into (dense state_dict, meta)."""
    path = Path(path)
    if not path.is_file():
        raise PruneBenchError(f"no sparse checkpoint at {path}: check the path")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # many types, all meaning "not a file we can read safely"
        raise PruneBenchError(f"{path} is not a weights-only PyTorch file ({type(e).__name__})") from None
    if not is_sparse(data):
        raise PruneBenchError(f"{path} is not a {FORMAT} file: write one with python -m exporters.sparse")
    return decode(data), dict(data.get("meta") or {})


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Build the CIFAR ResNet-18 from a compact sparse checkpoint or from an ordinary prunebench checkpoint."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    except Exception:
        data = None  # load_checkpoint below gives the one-line error
    if not is_sparse(data):
        return load_checkpoint(path)
    state, meta = decode(data), dict(data.get("meta") or {})
    # Through a dense temporary file so that load_checkpoint's architecture checks apply unchanged.
    with tempfile.TemporaryDirectory(prefix="prunebench-") as folder:
        tmp = Path(folder) / path.name
        torch.save({"state_dict": state, "meta": meta}, tmp)
        model, meta = load_checkpoint(tmp)
    meta.setdefault("sparse_file", str(path))
    return model, meta


@dataclasses.dataclass
class SparseReport:
    """Sizes of the dense input and of the compact file, and what they hold."""

    path: Path
    dense_bytes: int  # the input checkpoint file
    dense_gzip_bytes: int
    compact_bytes: int
    compact_gzip_bytes: int
    weights: int  # elements of the tensors stored sparse
    nonzeros: int  # of those


def export_sparse(checkpoint: str | Path, output: str | Path | None = None, force: bool = False) -> SparseReport:
    """Write the compact form of a checkpoint and prove it decodes to the same weights.

    Default output: beside the input, ``<stem>.sparse.pt``.
    """
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else checkpoint.with_name(checkpoint.stem + ".sparse.pt")
    if output.resolve() == checkpoint.resolve():
        raise PruneBenchError(f"output {output} is the input checkpoint: choose another name with -o")
    check_writable(output, force)
    model, meta = load_checkpoint(checkpoint)  # validates the architecture
    state = model.state_dict()
    data = encode(state)
    data["meta"] = {**meta, "source_checkpoint": str(checkpoint)}
    tmp = output.with_name(output.name + ".tmp")
    try:
        torch.save(data, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PruneBenchError(f"cannot write {output}: {e.strerror or e}") from None
    back, _ = load_sparse(tmp)
    mismatched = [k for k in state if not torch.equal(back[k], state[k]) or back[k].dtype != state[k].dtype]
    if list(back) != list(state) or mismatched:
        tmp.unlink(missing_ok=True)
        raise PruneBenchError(f"sparse round trip changed {mismatched[:3] or 'the keys'}: not written")
    os.replace(tmp, output)
    return SparseReport(
        path=output,
        dense_bytes=checkpoint.stat().st_size,
        dense_gzip_bytes=gzip_size(checkpoint),
        compact_bytes=output.stat().st_size,
        compact_gzip_bytes=gzip_size(output),
        weights=sum(int(np.prod(e["shape"])) for e in data["sparse"].values()),
        nonzeros=sum(e["values"].numel() for e in data["sparse"].values()),
    )


def format_report(report: SparseReport) -> str:
    density = report.nonzeros / report.weights if report.weights else 1.0
    ratio = report.compact_bytes / report.dense_bytes if report.dense_bytes else 1.0
    return "\n".join(
        [
            f"wrote {report.path}",
            f"dense checkpoint: {human_bytes(report.dense_bytes)} (gzip {human_bytes(report.dense_gzip_bytes)})",
            f"compact sparse:   {human_bytes(report.compact_bytes)} (gzip {human_bytes(report.compact_gzip_bytes)}), "
            f"{ratio:.1%} of dense",
            f"bitmask+values tensors: {report.nonzeros} nonzeros of {report.weights} weights ({density:.2%} dense); "
            f"round trip exact",
        ]
    )


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters.sparse", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="prunebench checkpoint or bare ResNet-18 state_dict (.pt)")
    parser.add_argument("-o", "--output", help="file to write (default: <checkpoint stem>.sparse.pt beside it)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    args = parser.parse_args(argv)
    print(format_report(export_sparse(args.checkpoint, args.output, force=args.force)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
