"""External engines in a worker process: the protocol, tested with ONNX Runtime as the stand-in engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.backends import get_backend
from bench.backends.external import DEEPSPARSE_PYTHON, Worker
from prune.errors import PruneBenchError


@pytest.fixture(scope="module")
def stand_in():
    from bench import models as bench_models
    from bench.parity import prepare_checked

    bm = bench_models.load(bench_models.model_spec("synthetic:0.9"))
    prepared, _, diff = prepare_checked(get_backend("onnxruntime-worker"), bm, 2, "cpu", 1, "stand-in")
    yield bm, prepared, diff
    prepared.close()


def test_the_worker_returns_the_models_output_and_times_its_own_blocks(stand_in):
    bm, prepared, diff = stand_in
    assert diff < 1e-3  # prepare_checked held it to dense PyTorch first
    got = prepared.to_torch(prepared.run(prepared.inputs))
    torch.testing.assert_close(got, bm.reference(2, seed=0), atol=1e-4, rtol=1e-3)
    assert prepared.time_block(0.01) > 0
    assert prepared.info["engine"] == "onnxruntime" and prepared.info["engine_version"]
    assert prepared.info["engine_isa"] is None  # ONNX Runtime does not say which of its kernels it picks


def test_the_ab_interleaves_a_worker_with_the_others(tmp_path):
    from bench import ab

    from bench.models import model_spec

    results = ab.compare([model_spec("synthetic:0.5")],
                         ab.ABSettings(backends="onnxruntime,onnxruntime-worker", blocks=2, block_s=0.01, pause_ms=0,
                                       threads=1), progress=False)
    (r,) = results
    assert all(len(b) == 2 and min(b) > 0 for b in r.blocks.values())


def test_a_missing_interpreter_or_engine_is_one_line(tmp_path, monkeypatch):
    deepsparse = get_backend("deepsparse")
    monkeypatch.delenv(DEEPSPARSE_PYTHON, raising=False)
    assert "--deepsparse-python" in deepsparse.unavailable("cpu")
    monkeypatch.setenv(DEEPSPARSE_PYTHON, str(tmp_path / "no-python"))
    assert "no Python interpreter" in deepsparse.unavailable("cpu")
    # an interpreter without the engine: the worker exits at once, and says why in one line
    worker = Worker(sys.executable, "no-such-engine")
    with pytest.raises(PruneBenchError, match="worker stopped: usage"):
        worker.request(op="load")


def test_an_engine_error_comes_back_as_one_line(tmp_path):
    worker = Worker(sys.executable, "onnxruntime")
    try:
        with pytest.raises(PruneBenchError, match="before 'load'"):
            worker.request(op="run", output=str(tmp_path / "y.npy"))
        x = tmp_path / "x.npy"
        np.save(x, np.zeros((1, 3, 32, 32), "float32"))
        with pytest.raises(PruneBenchError, match="onnxruntime worker: .*"):
            worker.request(op="load", onnx=str(tmp_path / "missing.onnx"), input=str(x), threads=1)
    finally:
        worker.close()
    assert worker.proc.wait(timeout=5) is not None


def test_what_an_engine_prints_stays_out_of_the_replies():
    import subprocess

    code = ("import os; from bench.backends.external_worker import own_stdout; replies = own_stdout(); "
            "print('from python'); os.write(1, b'from c\\n'); replies.write('reply\\n'); replies.flush()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "reply\n"
    assert "from python" in done.stderr and "from c" in done.stderr


def test_a_worker_that_answers_something_else_is_one_line(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Neural Magic: Using env variable NM_ARCH=avx2 for isa_type'\nread request\n")
    fake.chmod(0o755)
    worker = Worker(str(fake), "deepsparse")
    try:
        with pytest.raises(PruneBenchError, match="answered 'Neural Magic: .*', not a reply"):
            worker.request(op="load")
    finally:
        worker.close()


@pytest.mark.skipif(not os.environ.get(DEEPSPARSE_PYTHON), reason=f"DeepSparse needs its own venv: set {DEEPSPARSE_PYTHON}")
def test_deepsparse_matches_dense_pytorch():
    from bench import models as bench_models
    from bench.parity import prepare_checked

    bm = bench_models.load(bench_models.model_spec("synthetic:0.9"))
    prepared, _, _ = prepare_checked(get_backend("deepsparse"), bm, 1, "cpu", 2, "deepsparse")
    prepared.close()
    # what it runs, which NM_ARCH may narrow (not below AVX-512 where the CPU lists it)
    assert prepared.info["engine_isa"] in ("avx2", "avx512", "avx2 binary running AVX-512 code")


@pytest.mark.skipif(not os.environ.get(DEEPSPARSE_PYTHON), reason=f"DeepSparse needs its own venv: set {DEEPSPARSE_PYTHON}")
def test_deepsparse_held_to_avx2_says_what_it_runs(monkeypatch):
    from bench import models as bench_models
    from bench.parity import prepare_checked
    from prune.platform import cpu_flags

    if "avx512f" not in cpu_flags():
        pytest.skip("holding DeepSparse to AVX2 needs a CPU with AVX-512")
    wrapper = Path(__file__).resolve().parents[1] / "experiments" / "deepsparse_avx2.sh"
    if subprocess.run(["sh", "-c", "unshare -m true || unshare -r -m true"], capture_output=True).returncode:
        pytest.skip("the AVX2 wrapper needs a mount namespace: root, or unprivileged user namespaces")
    bm = bench_models.load(bench_models.model_spec("synthetic:0.9"))
    monkeypatch.setenv("NM_ARCH", "avx2")
    prepared, _, _ = prepare_checked(get_backend("deepsparse"), bm, 1, "cpu", 2, "deepsparse")
    prepared.close()
    assert prepared.info["engine_isa"] == "avx2 binary running AVX-512 code"
    monkeypatch.setenv("DS_PYTHON", os.environ[DEEPSPARSE_PYTHON])
    monkeypatch.setenv(DEEPSPARSE_PYTHON, str(wrapper))
    prepared, _, _ = prepare_checked(get_backend("deepsparse"), bm, 1, "cpu", 2, "deepsparse")
    prepared.close()
    assert prepared.info["engine_isa"] == "avx2"


# -- an engine's own per-layer profile ---------------------------------------------------------------------


class _Block(torch.nn.Module):
    """conv -> ReLU -> conv + shortcut -> ReLU, the shape of a ResNet block; ``off`` shifts the output outside export."""

    def __init__(self, off: float = 0.0):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 3, 3, padding=1)
        self.off = off

    def forward(self, x):
        y = self.relu(self.conv2(self.relu(self.conv1(x))) + x)
        return y if torch.onnx.is_in_onnx_export() else y + self.off


def test_onnx_names_map_to_modules():
    from bench.backends.external import onnx_module

    assert onnx_module("/layer1/layer1.0/conv2/Conv_output_0") == "layer1.0.conv2"
    assert onnx_module("/layer4/layer4.0/downsample/downsample.0/Conv") == "layer4.0.downsample.0"
    assert onnx_module("/conv1/Conv_output_0") == "conv1"
    assert onnx_module("logits") == ""


def test_the_stand_in_profiles_each_layer_after_checking_its_output():
    from bench.backends.external import engine_layers
    from bench.layers import match_steps

    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(2, 3, 16, 16)
    profile = engine_layers(model, x, 1, "onnxruntime", runs=3)
    assert profile.engine == "onnxruntime" and profile.version and profile.total_ms > 0 and profile.call_ms > 0
    assert profile.layers and all(step["ms"] >= 0 for step in profile.layers)
    assert sum(step["ms"] for step in profile.layers) <= profile.total_ms * 1.05  # its steps fit in its calls
    matched = [c for _, convs, _ in match_steps(profile.layers, ["conv1", "conv2"]) for c in convs]
    assert sorted(matched) == ["conv1", "conv2"]  # each conv in one step, by name or by order
    with pytest.raises(PruneBenchError, match=r"output \(its layer times are not reported\) differs from dense PyTorch"):
        engine_layers(_Block(off=1.0).eval(), x, 1, "onnxruntime", runs=3)


def test_a_profile_of_an_unknown_or_missing_engine_is_one_line(tmp_path, monkeypatch):
    from bench.backends.external import engine_layers

    model, x = _Block().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(PruneBenchError, match="no per-layer profile of 'tvm'"):
        engine_layers(model, x, 1, "tvm")
    monkeypatch.delenv(DEEPSPARSE_PYTHON, raising=False)
    with pytest.raises(PruneBenchError, match="interpreter of its own"):
        engine_layers(model, x, 1, "deepsparse")
    with pytest.raises(PruneBenchError, match="no Python interpreter"):
        engine_layers(model, x, 1, "deepsparse", str(tmp_path / "no-python"))


@pytest.mark.skipif(not os.environ.get(DEEPSPARSE_PYTHON), reason=f"DeepSparse needs its own venv: set {DEEPSPARSE_PYTHON}")
def test_deepsparse_profiles_each_layer():
    from bench import models as bench_models
    from bench.backends.external import engine_layers
    from bench.layers import match_steps

    model = bench_models.load(bench_models.model_spec("synthetic:0.9")).model.eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    profile = engine_layers(model, torch.randn(2, 3, 32, 32), 1, "deepsparse", runs=3)
    matched = [c for _, cs, by_order in match_steps(profile.layers, convs) for c in cs if not by_order]
    assert sorted(matched) == sorted(convs)  # DeepSparse names every conv it runs, fused or not
