"""Shared fixtures: a tiny CNN, small synthetic data, and one briefly trained ResNet-18 checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune.data import DataSettings, load_data


def kernel_isas() -> list[str]:
    """The selected build of the sparse kernels (``PRUNEBENCH_ISA``), and the AVX2 one too where the selected
    one is wider: on an AVX-512 CPU the kernel tests run against both."""
    from bench.kernels import build

    selected = build.selected_isa()
    wider = build.widest(selected) == "avx512" and "avx2" in build.cpu_isas()
    return [selected, "avx2"] if wider else [selected]


@pytest.fixture(scope="module", params=kernel_isas())
def isa(request):
    """The module's tests run with the kernels of this instruction set (built once, cached on disk); a module
    asks for it with ``pytestmark = pytest.mark.usefixtures("isa")``."""
    from bench import kernels as K
    from bench.kernels import build

    with build.using(request.param):
        reason = K.unavailable()
        if reason:
            pytest.skip(reason)
        yield request.param


@pytest.fixture
def one_thread():
    """Run torch on one intra-op thread for the test.

    On the 2-core machines this suite runs on (shared with other work), two
    threads for a ResNet-18 training step were about twice as slow as one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net(seed: int = 0) -> nn.Module:
    """Two convs and a linear layer taking 3x32x32 to 10 logits: trains in a fraction of a second."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


@pytest.fixture
def tiny():
    return tiny_net()


@pytest.fixture(scope="session")
def synthetic():
    """256 training and 128 test images of the synthetic set."""
    return load_data(DataSettings("synthetic", train_limit=256, test_limit=128))


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory):
    """A CIFAR ResNet-18 trained for one step on synthetic data, saved as a prunebench checkpoint."""
    from prune.checkpoint import save_checkpoint
    from prune.train import TrainSettings, train_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_data(DataSettings("synthetic", train_limit=16, test_limit=16))
        model, meta = train_model(data, TrainSettings(epochs=1, batch_size=16, workers=0, progress=False, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("base") / "resnet18_base.pt"
    save_checkpoint(path, model, meta)
    return path
