"""INT8 static quantization: the parity criterion can fail, the file is QDQ with per-channel weights, the CLI
and the onnxruntime-int8 backend work, and bad input is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bench.backends import BACKENDS, get_backend
from bench.parity import ParityError
from exporters import onnx as onnx_export
from exporters.quantize import (
    QuantizeSettings,
    check_int8,
    dataset_calibration,
    export_int8,
    int8_parity,
    random_calibration,
    relative_errors,
)
from prune.checkpoint import save_checkpoint
from prune.data import find_fashion_mnist
from prune.errors import PruneBenchError
from prune.structured import ChannelPruning, channel_meta, ChannelOutcome, ChannelSettings, parameter_count

pytestmark = pytest.mark.usefixtures("one_thread")


def small(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU x2, pooling and fc on 3x32x32: quantizes in about a second."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 10),
    )
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


SETTINGS = QuantizeSettings(calibrate="random", calibration_images=32, parity_images=32)


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    model = small()
    path = tmp_path_factory.mktemp("int8") / "small.int8.onnx"
    report = export_int8(model, path, SETTINGS, random_calibration(32, 32))
    return model, report


def test_int8_parity_passes_noise_and_fails_errors_and_another_inputs_output():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(64, 10))
    other = rng.normal(size=(64, 10))
    near = y + 0.02 * np.linalg.norm(y, axis=1, keepdims=True) * rng.normal(size=y.shape) / np.sqrt(10)
    result = int8_parity(near, y, other, 0.1, 0.25, 0.9, "near")
    assert result.median_rel_error == pytest.approx(float(np.median(relative_errors(near, y))))
    assert result.top1_agreement > 0.9
    with pytest.raises(PruneBenchError, match="above the bounds"):
        int8_parity(y + 0.5 * rng.normal(size=y.shape), y, other, 0.1, 0.25, None, "far")
    one_bad = near.copy()
    one_bad[3] = -y[3]  # one image off entirely: the median is fine, the worst is not
    with pytest.raises(PruneBenchError, match="worst image"):
        int8_parity(one_bad, y, other, 0.1, 0.25, None, "one bad")
    alike = np.tile(y[:1], (64, 1)) + 0.01 * rng.normal(size=y.shape)  # an output that barely depends on the input
    alike_other = np.roll(alike, 1, axis=0)
    with pytest.raises(PruneBenchError, match="tightened to half"):
        int8_parity(alike_other, alike, alike_other, 0.1, 0.25, None, "another input's output")
    int8_parity(alike + 1e-4 * rng.normal(size=y.shape), alike, alike_other, 0.1, 0.25, None, "close enough")
    swapped = near[:, ::-1].copy()  # same sizes, wrong classes
    with pytest.raises(PruneBenchError):
        int8_parity(swapped, y, other, 0.1, 0.25, 0.9, "swapped")


def test_int8_file_is_qdq_with_per_channel_weights_and_meets_the_criterion(int8_file):
    model, report = int8_file
    proto = onnx.load(str(report.path))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in proto.graph.initializer}
    per_channel = []
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].data_type == onnx.TensorProto.INT8:
            scale = inits[node.input[1]]
            per_channel.append(int(np.prod(scale.dims)) if scale.dims else 1)
    assert sorted(per_channel) == [10, 16, 32]  # one scale per output channel of fc, conv1, conv2
    assert report.bytes < report.fp32_bytes
    assert report.parity.median_rel_error <= SETTINGS.rel_error
    assert report.parity.max_rel_error <= SETTINGS.max_rel_error
    assert "noise" in report.calibration and not report.parity.real


def test_the_check_fails_against_another_model(int8_file):
    _, report = int8_file
    with pytest.raises(PruneBenchError, match="differ from fp32|agrees"):
        check_int8(report.path, small(seed=1), random_calibration(32, 32, seed=5), SETTINGS)


def test_quantize_settings_say_what_is_missing():
    with pytest.raises(PruneBenchError, match="needs --calibrate"):
        QuantizeSettings().check()
    with pytest.raises(PruneBenchError, match="unknown"):
        QuantizeSettings(calibrate="imagenet").check()


def test_missing_calibration_data_is_one_line(tmp_path):
    with pytest.raises(PruneBenchError) as e:
        dataset_calibration("fashion-mnist", 8, 8, data_root=str(tmp_path))
    assert "\n" not in str(e.value) and "Fashion-MNIST" in str(e.value)
    with pytest.raises(PruneBenchError, match="no training images"):
        dataset_calibration("cifar10-samples", 8, 8)


def test_real_calibration_images_are_normalised_training_images():
    try:
        find_fashion_mnist()
    except PruneBenchError as e:
        pytest.skip(f"Fashion-MNIST is not installed here ({e})")
    calibration = dataset_calibration("fashion-mnist", 16, 8)
    assert calibration.images.shape == (16, 3, 32, 32) and calibration.held_out.shape == (8, 3, 32, 32)
    assert calibration.real and calibration.labels.shape == (8,)
    assert abs(float(calibration.images.mean())) < 1.0  # normalised, not 0..255


@pytest.fixture(scope="module")
def channel_checkpoint(tmp_path_factory):
    """The suite's synthetic ResNet-18 channel-pruned to 90% of its MACs (small, so its INT8 export is quick)."""
    from bench.models import calibrate_batchnorm_, synthetic_resnet18

    base = synthetic_resnet18(0.0)
    model, result = ChannelPruning("l1", "uniform")(base, 0.9)
    calibrate_batchnorm_(model)
    outcome = ChannelOutcome(model, result.achieved, 0.0, result.tolerance, result.reference_macs,
                             parameter_count(base), [])
    path = tmp_path_factory.mktemp("c90") / "c90.pt"
    save_checkpoint(path, model, channel_meta(outcome, ChannelSettings()))
    return path


def test_onnx_cli_int8_writes_and_reports(channel_checkpoint, capsys):
    code = onnx_export.main([str(channel_checkpoint), "--int8", "--calibrate", "random", "--calibration-images", "16",
                             "--parity-images", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = Path(str(channel_checkpoint).replace(".pt", ".int8.onnx"))
    assert written.is_file() and f"wrote {written}" in out
    assert "synthetic N(0,1) noise" in out and "relative logit error" in out
    code = onnx_export.main([str(channel_checkpoint), "--int8", "--calibrate", "random"])
    assert code == 2 and "exists" in capsys.readouterr().err  # nothing overwritten without --force


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--int8"], "needs --calibrate"),
        (["--calibrate", "random"], "add --int8"),
        (["--int8", "--calibrate", "fashion-mnist", "--data-root", "/nonexistent"], "Fashion-MNIST"),
        (["--int8", "--calibrate", "cifar10-samples"], "no training images"),
    ],
)
def test_onnx_cli_int8_errors_are_one_line(channel_checkpoint, tmp_path, capsys, argv, expected):
    code = onnx_export.main([str(channel_checkpoint), "-o", str(tmp_path / "x.onnx"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "x.onnx").exists()


def test_int8_backend_is_registered_cpu_only_and_checks_its_own_way():
    assert "onnxruntime-int8" in BACKENDS
    backend = get_backend("onnxruntime-int8")
    assert backend.devices == ("cpu",) and backend.check is not None
    model = small()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prepared = backend.prepare(model, x, "cpu", 1)
    got = prepared.to_torch(prepared.run(prepared.inputs))
    with torch.inference_mode():
        expected, other = model(x), model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    backend.check(got, expected, other, "int8")
    assert prepared.info["precision"] == "int8" and "noise" in prepared.info["int8_calibration"]
    with pytest.raises(ParityError):
        backend.check(torch.flip(got, [0]), expected, other, "rows swapped")


def test_asking_int8_of_cuda_is_one_line():
    from bench.conftest import BenchSettings, make_plan

    with pytest.raises(PruneBenchError, match="no backend of onnxruntime-int8 runs on cuda"):
        make_plan(BenchSettings(backends="onnxruntime-int8", devices="cuda"))
    assert "CPU provider" in get_backend("onnxruntime-int8").unavailable("cuda")
