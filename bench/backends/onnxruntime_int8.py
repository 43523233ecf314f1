"""ONNX Runtime INT8: the model quantized by ``exporters.quantize`` (static, QDQ, per-channel weights), on the CPU.

Calibration is on the training images of the data set a checkpoint was trained
on, where they are here (``bench.models`` names it on the model), else on seeded
N(0,1) noise, the suite's own input for models without data; latency does not
depend on the calibrated ranges, accuracy does (``bench.accuracy`` measures INT8
top-1 with calibration on real images). Parity: INT8's own criterion (``check``), not
fp32's atol/rtol. Quantized files are cached per process by the fp32 model's
fingerprint, so batch sizes of one model share one.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.backends import Backend, Prepared
from bench.backends.convmm import inference_copy
from bench.backends.onnxruntime import cpu_prepared, fingerprint, session_options

CALIBRATION_INPUTS = 64  # inputs that set the activation ranges
# a model may name the data set it was trained on (its training images then calibrate it, its test images check
# it): noise ranges misquantize a trained model on real images (relative logit errors of 0.5-1)
CALIBRATION_DATASET = "prunebench_calibration_dataset"
HELD_OUT_INPUTS = 64  # others for the export's statistical check (median and worst relative error)

_EXPORTS: dict[str, tuple[Path, dict]] = {}
_FOLDER: Path | None = None


def unavailable(device: str) -> str | None:
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        return f"onnxruntime.quantization cannot be imported ({e}): pip install onnxruntime"
    if device != "cpu":
        return "INT8 QDQ runs on ONNX Runtime's CPU provider here (CUDA INT8 needs the TensorRT provider)"
    return None


def quantized(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[Path, dict]:
    """The model's verified INT8 file (made once per process) and its facts."""
    from exporters.quantize import QuantizeSettings, dataset_calibration, export_int8, random_calibration

    global _FOLDER
    key = f"{fingerprint(model)}-{'x'.join(map(str, input_shape))}"
    if key not in _EXPORTS:
        if _FOLDER is None:
            _FOLDER = Path(tempfile.mkdtemp(prefix="prunebench-int8-"))
            atexit.register(shutil.rmtree, _FOLDER, True)
        dataset = getattr(model, CALIBRATION_DATASET, None)  # set by bench.models for a trained checkpoint
        settings = QuantizeSettings(calibrate=dataset or "random", calibration_images=CALIBRATION_INPUTS,
                                    parity_images=HELD_OUT_INPUTS)
        calibration = (dataset_calibration(dataset, CALIBRATION_INPUTS, HELD_OUT_INPUTS) if dataset else
                       random_calibration(CALIBRATION_INPUTS, HELD_OUT_INPUTS, input_shape=input_shape))
        report = export_int8(model, _FOLDER / f"{key}.int8.onnx", settings, calibration, force=True)
        facts = {
            "precision": "int8",
            "int8_format": "QDQ, weights int8 per channel, activations int8 per tensor (MinMax)",
            "int8_calibration": report.calibration,
            "int8_bytes": report.bytes,
            "int8_export_median_rel_error": report.parity.median_rel_error,
            "int8_export_max_rel_error": report.parity.max_rel_error,
            "parity": f"int8: every image's relative logit error <= {MAX_REL_ERROR:g} (export: median <= "
                      f"{settings.rel_error:g} over {HELD_OUT_INPUTS} inputs); both at most half the relative "
                      "distance between different inputs' fp32 logits",
        }
        _EXPORTS[key] = (report.path, facts)
    return _EXPORTS[key]


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    import onnxruntime as ort

    from bench.parity import ParityError
    from prune.errors import PruneBenchError

    try:  # the export checks INT8 against fp32 on held-out inputs: its failure is a parity failure
        path, facts = quantized(inference_copy(model), tuple(example.shape[1:]))
    except PruneBenchError as e:
        raise ParityError(str(e)) from None
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    info = {**facts, "ort_providers": session.get_providers(), "ort_intra_op_threads": threads}
    return cpu_prepared(session, example, info)


MAX_REL_ERROR = 0.25  # per image, as exporters.quantize.QuantizeSettings.max_rel_error


def check(got: torch.Tensor, expected: torch.Tensor, other: torch.Tensor, what: str) -> None:
    """INT8 parity for one suite batch: every image within the worst-image bound, and not trivially so."""
    from bench.parity import ParityError
    from exporters.quantize import int8_parity
    from prune.errors import PruneBenchError

    try:
        # a suite batch may be one image: the worst-image bound for all (the median was checked at export)
        int8_parity(np.asarray(got), np.asarray(expected), np.asarray(other), MAX_REL_ERROR, MAX_REL_ERROR, None, what)
    except PruneBenchError as e:
        raise ParityError(str(e)) from None


BACKEND = Backend(
    name="onnxruntime-int8",
    devices=("cpu",),
    prepare=_prepare,
    unavailable=unavailable,
    check=check,
    description="ONNX Runtime session on the exporters.quantize INT8 file (static, QDQ, per-channel weights)",
)
