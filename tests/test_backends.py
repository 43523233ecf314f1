"""torch-sparse and onnxruntime backends: each matches dense PyTorch on small and pruned models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.backends import BACKENDS, get_backend
from bench.backends import onnxruntime as ort_backend
from bench.backends import torch_sparse
from prune.errors import PruneBenchError
from prune.mask import make_permanent_
from prune.models import prunable_layers, resnet18_cifar
from prune.pruning import prune_rounds
from prune.strategies import GlobalMagnitude

MINE = ("torch-sparse", "onnxruntime")


def small(sparsity: float, seed: int = 0) -> nn.Module:
    """Conv (stride 1 and 2, with and without bias) + BatchNorm + fc, magnitude-pruned with our own pruning."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 12, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 4),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.3, 0.3)
        model[1].running_var.uniform_(0.5, 2.0)
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):  # like scales in every layer: global pruning leaves each some weights
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    if sparsity:
        layers = prunable_layers(model)
        prune_rounds(layers, GlobalMagnitude(), sparsity, 1)
        make_permanent_(layers)
    return model.eval()


def run_backend(name: str, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    backend = get_backend(name)
    prepared = backend.prepare(model, x, "cpu", 1)
    with torch.inference_mode():
        y = prepared.to_torch(prepared.run(prepared.inputs))
        prepared.synchronize()
    return y, prepared.info


def test_registry_lists_and_finds_mine():
    for name in MINE:
        assert name in BACKENDS
        backend = get_backend(name)
        assert backend.name == name and set(backend.devices) == {"cpu", "cuda"}
        assert backend.unavailable("cpu") is None
    with pytest.raises(PruneBenchError, match="torch-sparse"):
        get_backend("torch-sparse-typo")


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("batch", [1, 3])
def test_small_model_matches_dense(name, sparsity, batch):
    model = small(sparsity)
    x = torch.randn(batch, 3, 10, 10, generator=torch.Generator().manual_seed(batch))
    got, _ = run_backend(name, model, x)
    with torch.inference_mode():
        expected = model(x)
    backend = get_backend(name)
    torch.testing.assert_close(got, expected, atol=backend.atol, rtol=backend.rtol)
    other = model(torch.randn_like(x)).detach()
    assert not torch.allclose(other, expected, atol=backend.atol, rtol=backend.rtol)  # the match means something


@pytest.fixture(scope="module")
def pruned_resnet():
    torch.manual_seed(0)
    model = resnet18_cifar()
    nn.init.normal_(model.fc.weight, std=0.05)  # keeps fc populated at 90% (default init would lose most of it)
    layers = prunable_layers(model)
    prune_rounds(layers, GlobalMagnitude(), 0.9, 1)
    make_permanent_(layers)
    return model.eval()


@pytest.mark.parametrize("name", MINE)
def test_pruned_resnet18_matches_dense(name, pruned_resnet):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got, info = run_backend(name, pruned_resnet, x)
    with torch.inference_mode():
        expected = pruned_resnet(x)
    backend = get_backend(name)
    torch.testing.assert_close(got, expected, atol=backend.atol, rtol=backend.rtol)
    if name == "torch-sparse":
        assert info["sparse_layers"] == 21  # 17 convs + 3 shortcuts + fc
        zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(pruned_resnet, True).values())
        total = sum(m.weight.numel() for m in prunable_layers(pruned_resnet, True).values())
        assert info["sparse_nonzeros"] == total - zeros
    else:
        assert info["onnx_zero_weights"] == sum(
            int((m.weight == 0).sum()) for m in prunable_layers(pruned_resnet, True).values()
        )


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0)),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2),
        nn.Conv2d(4, 6, 1, stride=2),
    ],
    ids=["3x3", "3x3-s2-nobias", "3x1-s2x1", "dilated", "1x1-s2"],
)
def test_sparse_conv_geometry(conv):
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.7] = 0
    x = torch.randn(3, 4, 9, 7)
    sparse = torch_sparse.SparseConv2d(conv)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), conv(x), atol=1e-5, rtol=1e-5)


def test_sparse_linear_any_leading_shape():
    linear = nn.Linear(6, 5)
    with torch.no_grad():
        linear.weight[torch.rand_like(linear.weight) < 0.6] = 0
    x = torch.randn(2, 3, 6)
    with torch.inference_mode():
        torch.testing.assert_close(torch_sparse.SparseLinear(linear)(x), linear(x), atol=1e-5, rtol=1e-5)


def test_filter_fn_chooses_layers():
    model = small(0.5)
    names = torch_sparse.sparsify_(model, lambda m, name: isinstance(m, nn.Linear))
    assert names == ["8"]
    assert isinstance(model[8], torch_sparse.SparseLinear) and isinstance(model[0], nn.Conv2d)


def test_conv2d_sparse_weight_probe_is_recorded():
    _, info = run_backend("torch-sparse", small(0.5), torch.randn(1, 3, 8, 8))
    probe = info["conv2d_sparse_weight"]
    assert probe.startswith("COO: ") and "; CSR: " in probe
    # The probe reports what F.conv2d really does with a sparse weight.
    w = torch.randn(3, 2, 3, 3)
    try:
        F.conv2d(torch.randn(1, 2, 5, 5), w.to_sparse(), padding=1)
        assert "COO: accepted" in probe
    except RuntimeError:
        assert "COO: RuntimeError" in probe


def test_onnxruntime_session_options_and_cache():
    options = ort_backend.session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    import onnxruntime as ort

    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    model = small(0.5)
    first, _ = ort_backend.exported(model, (3, 8, 8))
    again, _ = ort_backend.exported(small(0.5), (3, 8, 8))  # equal weights: the same file
    assert first == again
    other, _ = ort_backend.exported(small(0.9), (3, 8, 8))
    assert other != first


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given where there is no GPU")
@pytest.mark.parametrize("name", MINE)
def test_cuda_unavailable_says_why(name):
    assert "CUDA" in get_backend(name).unavailable("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("name", MINE)
def test_cuda_matches_dense(name):
    backend = get_backend(name)
    reason = backend.unavailable("cuda")
    if reason:
        pytest.skip(reason)
    model = small(0.9)
    x = torch.randn(2, 3, 10, 10)
    prepared = backend.prepare(model, x, "cuda", 1)
    with torch.inference_mode():
        got = prepared.to_torch(prepared.run(prepared.inputs))
        expected = model(x)
    torch.testing.assert_close(got, expected, atol=backend.atol, rtol=backend.rtol)
