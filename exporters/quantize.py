"""INT8 post-training static quantization of an exported model (ONNX Runtime, QDQ), calibrated and verified.

    python -m exporters.onnx model.pt --int8 --calibrate fashion-mnist [--calibration-images 256]

ONNX Runtime's ``quantize_static``: QDQ format (QuantizeLinear/DequantizeLinear
pairs that ORT fuses into integer kernels), weights int8 per output channel,
activations int8 per tensor with MinMax ranges measured on calibration images
(signed int8 for both is ORT's recommended first choice for QDQ on x86; Jacob et
al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"). The fp32 graph is first run through ORT's
``quant_pre_process`` (shape inference and graph optimisation), as ORT advises.

Calibration data: the first ``calibration_images`` images of the training split
of a ``prune.data`` data set, normalised as for evaluation (so the ranges are
those the model sees); or ``random``: seeded N(0,1) noise, the bench's synthetic
input, for the synthetic models that have no data set. Results say which.

Parity (``int8_parity``): INT8 is not fp32 within 1e-4, so it has its own
criterion against the fp32 PyTorch model, on the relative L2 error of each
image's logits, ||y8 - y|| / ||y|| (``relative_errors``): its median at most ``rel_error`` (0.1) and
its largest at most ``max_rel_error`` (0.25). Why these: 8-bit weights and
activations put about 2^-8 of each tensor's range of noise into every layer,
and over ResNet-18's 21 quantized layers that accumulates to a few percent
(median 0.05, largest 0.13 of 64 inputs on the synthetic models, whose
untrained logits are the least favourable case); a wrong scale, a swapped
channel or a broken layer shows as tens of percent or more. Where real
images exist, top-1 agreement with fp32 must be at least
``min_top1_agreement`` (0.9). So that the check can always fail, both bounds
shrink to half the median relative distance between the fp32 logits of
different inputs where that is smaller (a trained model fed noise answers
alike): another input's output then never passes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prune.errors import PruneBenchError
from prune.models import INPUT_SHAPE

RANDOM = "random"  # calibration on seeded N(0,1) noise (synthetic models); not images


@dataclasses.dataclass
class QuantizeSettings:
    """INT8 static quantization: calibration data and the parity criterion."""

    calibrate: str = ""  # calibration data: a data set (cifar10 | fashion-mnist | synthetic) or 'random' (N(0,1) noise)
    calibration_images: int = 256  # images (from the training split) that set the activation ranges
    parity_images: int = 256  # held-out images (test split) compared with fp32; random inputs for 'random'
    data_root: str = ""  # folder holding the calibration data set (default: the data set's usual place)
    rel_error: float = 0.1  # parity: median over images of ||int8 - fp32|| / ||fp32|| (L2 over the logits)
    max_rel_error: float = 0.25  # parity: the same for the worst image
    min_top1_agreement: float = 0.9  # parity on real images: share whose top-1 class equals fp32's
    per_channel: bool = True  # one int8 scale per output channel of each weight (else per tensor)

    def check(self) -> None:
        if not self.calibrate:
            raise PruneBenchError("--int8 needs --calibrate DATASET (cifar10, fashion-mnist, synthetic) or --calibrate random")
        if self.calibrate != RANDOM:
            from prune.data import get_dataset

            get_dataset(self.calibrate)  # an unknown name lists the valid ones
        if self.calibration_images < 1 or self.parity_images < 2:
            raise PruneBenchError("--calibration-images must be >= 1 and --parity-images >= 2")
        if not 0 < self.rel_error <= self.max_rel_error or not 0 <= self.min_top1_agreement <= 1:
            raise PruneBenchError("give 0 < --rel-error <= --max-rel-error and --min-top1-agreement in [0, 1]")


@dataclasses.dataclass
class Calibration:
    """Normalised float32 images for calibration and for the parity check, and what they are."""

    images: np.ndarray  # [N, 3, 32, 32]
    held_out: np.ndarray  # [M, 3, 32, 32], never used for calibration
    labels: np.ndarray | None  # of held_out, where real
    note: str  # e.g. "256 training images of fashion-mnist"
    real: bool  # images (top-1 agreement is meaningful), not noise


def random_calibration(images: int = 64, held_out: int = 64, seed: int = 0, input_shape=INPUT_SHAPE) -> Calibration:
    """Seeded N(0,1) inputs: the synthetic models' calibration, labelled as noise."""
    g = torch.Generator().manual_seed(seed)
    calib = torch.randn(images, *input_shape, generator=g).numpy()
    held = torch.randn(held_out, *input_shape, generator=g).numpy()
    return Calibration(calib, held, None, f"{images} synthetic N(0,1) noise inputs (not images)", False)


def dataset_calibration(name: str, images: int, held_out: int, data_root: str = "") -> Calibration:
    """The first ``images`` training images and first ``held_out`` test images of a data set, normalised."""
    from prune.data import DataSettings, batches, load_data

    data = load_data(DataSettings(name, data_root=data_root, train_limit=images, test_limit=held_out))
    try:
        train = data.require_train()
    except PruneBenchError:
        raise PruneBenchError(f"data set {name!r} has no training images to calibrate on: choose another --calibrate") from None

    def stack(split):
        xs, ys = zip(*batches(split, data, 256, False, torch.device("cpu")))
        return torch.cat(xs).numpy().astype(np.float32), torch.cat(ys).numpy()

    calib, _ = stack(train)
    held, labels = stack(data.test)
    return Calibration(calib, held, labels, f"{len(calib)} training images of {data.name}", True)


def calibration_for(settings: QuantizeSettings) -> Calibration:
    settings.check()
    if settings.calibrate == RANDOM:
        return random_calibration(settings.calibration_images, settings.parity_images)
    return dataset_calibration(settings.calibrate, settings.calibration_images, settings.parity_images, settings.data_root)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over batches of a numpy array."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 32):
        self.input_name = input_name
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: np.ascontiguousarray(self.batches[self.position - 1])}

    def rewind(self):
        self.position = 0


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calibration: Calibration, per_channel: bool = True) -> Path:
    """Write the INT8 QDQ model of the fp32 ONNX file ``fp32_path`` to ``out_path`` (no checks; see ``check_int8``)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader_cls = type("Reader", (_Reader, CalibrationDataReader), {})
    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="prunebench-int8-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
            quantize_static(
                str(prepared),
                str(out_path),
                reader_cls(input_name, calibration.images),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibration_providers=["CPUExecutionProvider"],
            )
        except PruneBenchError:
            raise
        except Exception as e:  # ORT's quantizer raises many types; all mean this graph did not quantize
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PruneBenchError(f"INT8 quantization failed: {first[:200]}") from None
    return Path(out_path)


@dataclasses.dataclass
class Int8Parity:
    """How the INT8 model's logits compare with fp32's."""

    max_rel_error: float  # largest per-image ||y8 - y|| / ||y||
    median_rel_error: float
    top1_agreement: float  # share of images whose top-1 equals fp32's
    images: int
    real: bool  # the images are real (top-1 agreement was checked)


def relative_errors(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per-row ||got - expected|| / max(||expected||, median row norm of ``expected``) (L2 over one image's logits).

    Relative to the image's own logits, except that an image whose logits are
    nearly all zero (an undecided model) is measured against the batch's
    median norm: its own would turn an absolute error no larger than the
    others' into a huge relative one. At batch 1 this is the plain relative error.
    """
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    own = np.linalg.norm(expected, axis=1)
    norm = np.maximum(own, float(np.median(own)))
    return np.linalg.norm(got - expected, axis=1) / np.maximum(norm, 1e-12)


def int8_parity(got: np.ndarray, expected: np.ndarray, other: np.ndarray, rel_error: float, max_rel_error: float,
                min_top1: float | None, what: str) -> Int8Parity:
    """Fail (one line) unless INT8 logits ``got`` meet the INT8 criterion against fp32 ``expected``.

    ``other``: fp32 logits of other inputs, same count. The check must be able to
    tell the right output from another input's, so where the fp32 logits of
    different inputs are close (median relative spread s; a trained model fed
    noise answers alike) both bounds shrink to at most s/2: the output of another
    input then always fails. ``min_top1``: required top-1 agreement (None: not
    checked, for noise inputs whose top-1 means nothing).
    """
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        raise PruneBenchError(f"{what}: INT8 output shape {got.shape}, fp32 {expected.shape}")
    spread = float(np.median(relative_errors(other, expected)))
    median_bound, worst_bound = min(rel_error, spread / 2), min(max_rel_error, spread / 2)
    errors = relative_errors(got, expected)
    agreement = float(np.mean(np.argmax(got, 1) == np.argmax(expected, 1)))
    result = Int8Parity(float(errors.max()), float(np.median(errors)), agreement, len(errors), min_top1 is not None)
    if result.median_rel_error > median_bound or result.max_rel_error > worst_bound:
        why = "" if median_bound == rel_error and worst_bound == max_rel_error else (
            f" (tightened to half the {spread:.3g} that separates different inputs' fp32 logits)")
        raise PruneBenchError(
            f"{what}: INT8 logits differ from fp32 by a relative {result.median_rel_error:.3g} (median) and "
            f"{result.max_rel_error:.3g} (worst image), above the bounds {median_bound:.3g} and {worst_bound:.3g}{why}"
        )
    if min_top1 is not None and agreement < min_top1:
        raise PruneBenchError(
            f"{what}: INT8 agrees with fp32's top-1 class on {agreement:.1%} of {len(errors)} images, below {min_top1:.0%}"
        )
    return result


@dataclasses.dataclass
class Int8Report:
    """What an INT8 export produced and what its checks found."""

    path: Path
    bytes: int
    fp32_bytes: int
    calibration: str  # what calibrated it
    parity: Int8Parity
    accuracy: float | None  # top-1 of the INT8 model on the held-out labelled images, where real
    fp32_accuracy: float | None  # same images, fp32 PyTorch


def ort_logits(path: str | Path, images: np.ndarray, threads: int = 0, batch: int = 64) -> np.ndarray:
    from exporters.onnx import session_for

    session = session_for(path, threads or None)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: np.ascontiguousarray(images[i : i + batch])})[0]
                           for i in range(0, len(images), batch)])


def torch_logits(model: nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(images[i : i + batch])).float().numpy()
                               for i in range(0, len(images), batch)])


def check_int8(path: Path, model: nn.Module, calibration: Calibration, settings: QuantizeSettings) -> Int8Report:
    """Compare the INT8 file with the fp32 model on the held-out inputs (see the module docstring)."""
    expected = torch_logits(model, calibration.held_out)
    got = ort_logits(path, calibration.held_out)
    other = np.roll(expected, 1, axis=0)  # each image's logits against another image's
    parity = int8_parity(got, expected, other, settings.rel_error, settings.max_rel_error,
                         settings.min_top1_agreement if calibration.real else None, f"INT8 {path.name}")
    accuracy = fp32_accuracy = None
    if calibration.labels is not None:
        accuracy = float(np.mean(np.argmax(got, 1) == calibration.labels))
        fp32_accuracy = float(np.mean(np.argmax(expected, 1) == calibration.labels))
    return Int8Report(path, path.stat().st_size, 0, calibration.note, parity, accuracy, fp32_accuracy)


def export_int8(model: nn.Module, path: str | Path, settings: QuantizeSettings, calibration: Calibration | None = None,
                force: bool = False, onnx_settings=None) -> Int8Report:
    """Export ``model`` to fp32 ONNX (verified), quantize it to INT8 at ``path`` and verify that against fp32.

    ``calibration`` defaults to the one ``settings`` names (``calibration_for``).
    """
    from exporters.onnx import OnnxSettings, export_model
    from prune.checkpoint import check_writable

    path = check_writable(path, force)
    calibration = calibration or calibration_for(settings)
    model = model.cpu().eval()
    with tempfile.TemporaryDirectory(prefix="prunebench-int8-") as folder:
        fp32 = export_model(model, Path(folder) / "fp32.onnx", onnx_settings or OnnxSettings(), force=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            quantize_onnx(fp32.path, tmp, calibration, settings.per_channel)
            report = check_int8(tmp, model, calibration, settings)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)  # only a verified file takes the user's name
        report.path, report.bytes, report.fp32_bytes = path, path.stat().st_size, fp32.bytes
    return report


def format_int8_report(report: Int8Report, settings: QuantizeSettings) -> str:
    from exporters import human_bytes

    p = report.parity
    lines = [
        f"wrote {report.path} (INT8 QDQ, weights per-{'channel' if settings.per_channel else 'tensor'}, "
        f"calibrated on {report.calibration})",
        f"size: {human_bytes(report.bytes)} (fp32 ONNX {human_bytes(report.fp32_bytes)})",
        f"INT8 vs fp32 PyTorch on {p.images} held-out {'images' if p.real else 'noise inputs'}: relative logit error "
        f"median {p.median_rel_error:.3g}, worst {p.max_rel_error:.3g} (allowed {settings.rel_error:g}, "
        f"{settings.max_rel_error:g})"
        + (f"; top-1 agreement {p.top1_agreement:.1%} (required {settings.min_top1_agreement:.0%})" if p.real else ""),
    ]
    if report.accuracy is not None:
        lines.append(f"top-1 on those images: INT8 {report.accuracy:.2%}, fp32 {report.fp32_accuracy:.2%}")
    return "\n".join(lines)
