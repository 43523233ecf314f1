"""Export a prunebench checkpoint to ONNX, verified: checker, ONNX Runtime parity and surviving zeros.

    python -m exporters.onnx model.pt [-o model.onnx] [--opset N] [--batch-size N|dynamic] [--force]
    python -m exporters.onnx model.pt --int8 --calibrate DATASET [--calibration-images N]   # INT8: exporters.quantize

The export uses PyTorch's torch.export-based exporter (``dynamo=True``, the
default since PyTorch 2.9; the TorchScript one is deprecated). Its graph
optimiser folds each eval-mode BatchNorm into the convolution before it:
w' = w * gamma / sqrt(var + eps) per output channel, so a pruned weight stays
exactly zero and the zero count of the Conv/Gemm weight initializers equals the
model's zero conv/linear weights. The only way to gain zeros is a BatchNorm
scale (gamma) of exactly zero, which zeroes a whole filter; the check allows
that surplus and nothing else. Zeros in other initializers (folded biases of
an untrained model are all zero) are not counted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from exporters import gzip_size, human_bytes, run_cli
from prune.checkpoint import check_writable, load_checkpoint
from prune.cli import add_settings, settings_from
from prune.errors import PruneBenchError
from prune.models import INPUT_SHAPE

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and up; conversion down fails for ResNet-18


def parse_batch_size(text: str) -> int | None:
    """``"dynamic"`` -> None (a dynamic batch axis), else a whole number >= 1."""
    if isinstance(text, int) or text is None:
        return text
    if text.strip().lower() == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size {text!r} is neither a whole number nor 'dynamic'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size {value} must be >= 1 (or 'dynamic')")
    return value


@dataclasses.dataclass
class OnnxSettings:
    """How to export and how strictly to check the result."""

    opset: int = dataclasses.field(default=MIN_OPSET, metadata={"help": f"ONNX operator set, >= {MIN_OPSET}"})
    batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "fixed batch size N, or 'dynamic' for a dynamic batch axis", "shown": "dynamic"}
    )
    atol: float = dataclasses.field(default=1e-4, metadata={"help": "parity: allowed |ORT - PyTorch| ..."})
    rtol: float = dataclasses.field(default=1e-3, metadata={"help": "... plus this times |PyTorch|"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the random parity input"})


@dataclasses.dataclass
class OnnxReport:
    """What an export produced and what its checks found."""

    path: Path
    bytes: int  # file size
    zero_weights: int  # exact zeros in the Conv/Gemm/MatMul weight initializers
    model_zero_weights: int  # exact zeros in the PyTorch model's conv/linear weights
    weights: int  # elements of those initializers
    max_abs_diff: float  # largest |ORT - PyTorch| on the parity input
    parity_batch: int  # batch size of the parity input
    opset: int
    batch_size: int | None  # None: dynamic
    gzip_bytes: int | None = None  # file size after gzip -6 (measured by export_checkpoint: it takes seconds)


def weight_zero_counts(model: nn.Module) -> tuple[int, int]:
    """(zeros, elements) over the weights of every Conv and Linear layer of a PyTorch model."""
    zeros = numel = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            w = module.weight.detach()
            zeros += int((w == 0).sum())
            numel += w.numel()
    return zeros, numel


def _zero_batchnorm_scales(model: nn.Module) -> int:
    return sum(
        int((m.weight.detach() == 0).sum())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    )


def onnx_weight_zero_counts(onnx_model) -> tuple[int, int]:
    """(zeros, elements) over the initializers feeding the weight input of Conv, Gemm and MatMul nodes.

    Identity nodes (the exporter's way of sharing equal tensors) are followed back
    to their initializer; each initializer is counted once.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx_model.graph.initializer}
    constants = {}
    aliases = {}
    for node in onnx_model.graph.node:
        if node.op_type == "Identity" and node.input and node.output:
            aliases[node.output[0]] = node.input[0]
        elif node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t

    def resolve(name: str) -> str:
        seen = set()
        while name in aliases and name not in seen:
            seen.add(name)
            name = aliases[name]
        return name

    counted = set()
    zeros = numel = 0
    for node in onnx_model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        # Conv(X, W), Gemm(A, B): the weight is the second input; MatMul may hold it on either side.
        candidates = [node.input[1]] if node.op_type != "MatMul" else list(node.input[:2])
        for name in candidates:
            source = resolve(name)
            tensor = inits.get(source) or constants.get(source)
            if tensor is None or source in counted:
                continue
            counted.add(source)
            array = numpy_helper.to_array(tensor)
            zeros += int(np.count_nonzero(array == 0))
            numel += int(array.size)
    return zeros, numel


def session_for(path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session for checks (benchmarks build theirs in ``bench.backends.onnxruntime``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_model(
    model: nn.Module,
    path: str | Path,
    settings: OnnxSettings | None = None,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    force: bool = False,
) -> OnnxReport:
    """Export ``model`` (eval mode, CPU copy) to ``path`` and verify the file.

    Checks, each failing with a one-line ``PruneBenchError``: ``onnx.checker``;
    ONNX Runtime against PyTorch on a seeded random batch (max |diff| <= atol +
    rtol * |PyTorch|); the zero weights of the file against the model's.
    ``input_shape`` is one input without its batch axis.
    """
    settings = settings or OnnxSettings()
    if any(hasattr(m, "weight_orig") for m in model.modules()):
        raise PruneBenchError("the model still has pruning masks attached: make them permanent first (make_permanent_)")
    if settings.opset < MIN_OPSET:
        raise PruneBenchError(
            f"opset {settings.opset} is below {MIN_OPSET}, the lowest the torch.export-based exporter writes"
        )
    path = check_writable(path, force)
    model = copy.deepcopy(model).cpu().eval()
    fixed = settings.batch_size
    # torch.export specialises a dimension of size 1, so a dynamic axis is traced with two images.
    example = torch.randn(fixed or 2, *input_shape, generator=torch.Generator().manual_seed(settings.seed))
    dynamic_shapes = None if fixed else ({0: torch.export.Dim("batch", min=1)},)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter is not the user's concern
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                opset_version=settings.opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean this model cannot be exported as is
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PruneBenchError(f"ONNX export failed: {first[:200]}") from None
    try:
        program.save(str(tmp), external_data=False)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PruneBenchError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        report = _verify(tmp, model, settings, input_shape)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # only a verified file takes the user's name
    report.path = path
    return report


def _verify(path: Path, model: nn.Module, settings: OnnxSettings, input_shape: tuple[int, ...]) -> OnnxReport:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise PruneBenchError(f"onnx.checker rejects the export: {str(e).splitlines()[0][:200]}") from None
    proto = onnx.load(str(path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != settings.opset:
        raise PruneBenchError(f"the exporter wrote opset {opset}, not the {settings.opset} asked for")

    zeros, numel = onnx_weight_zero_counts(proto)
    model_zeros, _ = weight_zero_counts(model)
    gained_allowed = _zero_batchnorm_scales(model) > 0
    if zeros < model_zeros or (zeros > model_zeros and not gained_allowed):
        raise PruneBenchError(
            f"the ONNX weights hold {zeros} zeros, the model {model_zeros}: zeros did not survive export"
        )

    # An odd batch (3) that the export never saw proves the dynamic axis works.
    batch = settings.batch_size or 3
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(settings.seed + 1))
    with torch.inference_mode():
        expected = model(x).float().numpy()
    got = session_for(path).run(None, {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise PruneBenchError(f"ONNX Runtime returned shape {got.shape}, PyTorch {expected.shape}")
    diff = np.abs(got - expected)
    max_diff = float(diff.max()) if diff.size else 0.0
    bound = settings.atol + settings.rtol * np.abs(expected)
    if not np.all(diff <= bound):
        raise PruneBenchError(
            f"ONNX Runtime differs from PyTorch by up to {max_diff:.3g} "
            f"(allowed {settings.atol:g} + {settings.rtol:g}*|y|): the export is wrong"
        )
    return OnnxReport(
        path=path,
        bytes=path.stat().st_size,
        zero_weights=zeros,
        model_zero_weights=model_zeros,
        weights=numel,
        max_abs_diff=max_diff,
        parity_batch=batch,
        opset=opset,
        batch_size=settings.batch_size,
    )


def export_checkpoint(
    checkpoint: str | Path, output: str | Path | None = None, settings: OnnxSettings | None = None, force: bool = False
) -> OnnxReport:
    """Load a prunebench checkpoint (or bare ResNet-18 state_dict) and export it; default output: beside it, ``.onnx``."""
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else checkpoint.with_suffix(".onnx")
    check_writable(output, force)  # fail before the slow part
    model, _ = load_checkpoint(checkpoint)
    report = export_model(model, output, settings, force=force)
    report.gzip_bytes = gzip_size(report.path)
    return report


def format_report(report: OnnxReport, settings: OnnxSettings) -> str:
    batch = "dynamic" if report.batch_size is None else str(report.batch_size)
    share = report.zero_weights / report.weights if report.weights else 0.0
    return "\n".join(
        [
            f"wrote {report.path} (opset {report.opset}, batch {batch})",
            f"size: {human_bytes(report.bytes)} ({report.bytes} bytes)"
            + (f"; gzip: {human_bytes(report.gzip_bytes)}" if report.gzip_bytes is not None else ""),
            f"zero weights in initializers: {report.zero_weights} of {report.weights} ({share:.2%}); "
            f"model: {report.model_zero_weights}",
            f"ONNX Runtime vs PyTorch on a random batch of {report.parity_batch}: max |diff| {report.max_abs_diff:.3g} "
            f"(allowed {settings.atol:g} + {settings.rtol:g}*|y|)",
        ]
    )


def _main(argv: Sequence[str] | None) -> int:
    from exporters.quantize import QuantizeSettings

    parser = argparse.ArgumentParser(prog="python -m exporters.onnx", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="prunebench checkpoint or bare ResNet-18 state_dict (.pt)")
    parser.add_argument("-o", "--output", help="ONNX file to write (default: the checkpoint's name with .onnx, .int8.onnx)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--int8", action="store_true", help="write the INT8 (QDQ, static) model instead; needs --calibrate")
    add_settings(parser, OnnxSettings, types={"batch_size": parse_batch_size})
    add_settings(parser, QuantizeSettings)
    args = parser.parse_args(argv)
    settings = settings_from(args, OnnxSettings)
    if args.int8:
        return _main_int8(args, settings)
    if args.calibrate:
        raise PruneBenchError("--calibrate sets the INT8 calibration data: add --int8, or leave it out for fp32")
    report = export_checkpoint(args.checkpoint, args.output, settings, force=args.force)
    print(format_report(report, settings))
    return 0


def _main_int8(args, onnx_settings: OnnxSettings) -> int:
    from exporters.quantize import QuantizeSettings, calibration_for, export_int8, format_int8_report

    quantize = settings_from(args, QuantizeSettings)
    quantize.check()
    checkpoint = Path(args.checkpoint)
    output = Path(args.output) if args.output else checkpoint.with_name(checkpoint.stem + ".int8.onnx")
    check_writable(output, args.force)  # before the slow part
    model, meta = load_checkpoint(checkpoint)
    calibration = calibration_for(quantize)  # missing data fails here, before any export
    if meta.get("dataset") and calibration.real and meta["dataset"] != args.calibrate:
        raise PruneBenchError(
            f"{checkpoint} was trained on {meta['dataset']}: calibrate on the same data (--calibrate {meta['dataset']})"
        )
    report = export_int8(model, output, quantize, calibration, force=args.force, onnx_settings=onnx_settings)
    print(format_int8_report(report, quantize))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
