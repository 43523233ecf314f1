"""Top-1 of every variant of a study's checkpoints on real test images: fp32, and INT8 calibrated on real images.

    python -m bench.accuracy runs/study [--dataset fashion-mnist] [--test-limit 1000] [--calibration-images 256]

For each checkpoint (dense base, unstructured and channel-pruned cases) it
measures fp32 top-1 (PyTorch) and INT8 top-1 (``exporters.quantize``: static
QDQ, calibrated on the first ``--calibration-images`` training images of the
same data set, run in ONNX Runtime), both on the same first ``--test-limit``
test images, and writes ``accuracy.json`` beside them. ``bench.report
--accuracy accuracy.json`` joins it with a latency run into the
accuracy-latency plot. An INT8 model that fails its parity criterion
against fp32 (``exporters.quantize``) is still measured, and recorded with the
reason (``int8_checked: false``); the plot draws it hollow and off the frontier.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from prune.errors import PruneBenchError

ACCURACY_FILE = "accuracy.json"


@dataclasses.dataclass
class AccuracySettings:
    """Which images the variants are measured on."""

    dataset: str = ""  # data set of the checkpoints (default: the one their meta names)
    data_root: str = ""  # folder holding it (default: its usual place)
    test_limit: int = 1000  # first N test images (0: all)
    calibration_images: int = 256  # training images that calibrate each INT8 model


def variant_facts(meta: dict, facts: dict) -> dict:
    """What a plot needs to name a variant: structure, method, sparsity figures."""
    return {
        "structure": facts.get("structure", "unstructured"),
        "strategy": meta.get("strategy", "dense" if facts.get("sparsity", 0) < 0.005 else "?"),
        "method": meta.get("method", "dense"),
        "sparsity": facts.get("sparsity"),
        "mac_sparsity": facts.get("mac_sparsity"),
        "rounds": meta.get("rounds"),
        "epochs": meta.get("epochs"),
    }


def measure(folder: str | Path, settings: AccuracySettings, output: str | Path | None = None, force: bool = False) -> dict:
    """Measure every checkpoint in ``folder``; write and return the accuracy file's contents."""
    from bench import models as bench_models
    from exporters.onnx import OnnxSettings, export_model
    from exporters.quantize import QuantizeSettings, check_int8, dataset_calibration, ort_logits, quantize_onnx, torch_logits
    from prune.checkpoint import check_writable, load_state
    from prune.platform import provenance
    from prune.study import write_atomic

    folder = Path(folder)
    output = check_writable(Path(output) if output else folder / ACCURACY_FILE, force)
    specs = [s for s in bench_models.checkpoint_specs(str(folder)) if not s.path.endswith(".sparse.pt")]
    datasets = {load_state(s.path)[1].get("dataset") for s in specs} - {None}
    dataset = settings.dataset or (datasets.pop() if len(datasets) == 1 else "")
    if not dataset:
        raise PruneBenchError(f"the checkpoints in {folder} name {sorted(datasets) or 'no'} data sets: give --dataset")
    if settings.test_limit < 0 or settings.calibration_images < 1:
        raise PruneBenchError("--test-limit must be >= 0 and --calibration-images >= 1")
    calibration = dataset_calibration(dataset, settings.calibration_images, settings.test_limit, settings.data_root)
    quantize = QuantizeSettings(calibrate=dataset, calibration_images=settings.calibration_images,
                                parity_images=len(calibration.held_out))
    models = {}
    with tempfile.TemporaryDirectory(prefix="prunebench-accuracy-") as tmp:
        for spec in tqdm(specs, desc="accuracy"):
            bench_model = bench_models.load(spec)
            _, meta = load_state(spec.path)
            logits = torch_logits(bench_model.model, calibration.held_out)
            entry = {
                **variant_facts(meta, bench_model.facts),
                "fp32": float(np.mean(np.argmax(logits, 1) == calibration.labels)),
                "int8": None,
            }
            fp32 = export_model(bench_model.model, Path(tmp) / f"{spec.id}.onnx", OnnxSettings(), force=True)
            int8 = quantize_onnx(fp32.path, Path(tmp) / f"{spec.id}.int8.onnx", calibration)
            got = ort_logits(int8, calibration.held_out)
            entry["int8"] = float(np.mean(np.argmax(got, 1) == calibration.labels))
            try:
                entry["int8_parity"] = dataclasses.asdict(check_int8(int8, bench_model.model, calibration, quantize).parity)
                entry["int8_checked"] = True
            except PruneBenchError as e:  # measured all the same, and flagged: the plot leaves it off the frontier
                entry["int8_checked"] = False
                entry["int8_error"] = str(e)
            models[spec.id] = entry
            tqdm.write(f"{spec.id}: fp32 {entry['fp32']:.2%}, INT8 {entry['int8']:.2%}"
                       + ("" if entry["int8_checked"] else f" (fails the INT8 parity criterion: {entry['int8_error']})"))
    data = {
        "dataset": dataset,
        "test_images": len(calibration.held_out),
        "calibration": calibration.note,
        "int8": "exporters.quantize: static QDQ, int8 weights per channel, int8 activations (MinMax)",
        "models": models,
        "provenance": provenance(),
    }
    write_atomic(output, json.dumps(data, indent=2) + "\n")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    from prune.cli import add_settings, settings_from

    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a study folder (its *.pt checkpoints)")
    parser.add_argument("-o", "--output", help=f"file to write (default: FOLDER/{ACCURACY_FILE})")
    parser.add_argument("--force", action="store_true", help="overwrite the output file")
    add_settings(parser, AccuracySettings)
    args = parser.parse_args(argv)
    try:
        data = measure(args.folder, settings_from(args, AccuracySettings), args.output, args.force)
    except PruneBenchError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"{len(data['models'])} checkpoints on {data['test_images']} {data['dataset']} test images; "
          f"INT8 calibrated on {data['calibration']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
