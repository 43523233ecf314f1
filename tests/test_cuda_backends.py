"""The CUDA baselines and torch.sparse BSR: registry entries, skips with reasons, and what runs on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.backends import BACKENDS, get_backend
from bench.backends import cuda_dense, semi_structured, torch_sparse_bsr
from bench.backends.convmm import ConvAsMatmul
from prune.mask import Mask, attach_
from prune.models import prunable_layers, resnet18_cifar
from prune.strategies import GlobalMagnitude

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA GPU on this machine"

CUDA_ONLY = [
    "torch-dense-channels-last",
    "torch-cuda-graph",
    "torch-compile-cuda",
    "torch-dense-fp16",
    "torch-dense-bf16",
    "torch-cuda-graph-fp16",
    "torch-compile-cuda-fp16",
    "torch-2:4",
    "torch-2:4-bf16",
    "torch-2:4-cutlass",
    "im2col-dense-fp16",
]
CPU_AND_CUDA = ["torch-sparse-bsr", "torch-sparse-bsr-4"]


@pytest.mark.parametrize("name", CUDA_ONLY + CPU_AND_CUDA)
def test_registered_under_its_own_name(name):
    assert name in BACKENDS
    backend = get_backend(name)
    assert backend.name == name
    assert backend.devices == (("cpu", "cuda") if name in CPU_AND_CUDA else ("cuda",))
    assert backend.description
    assert 0 < backend.atol <= 0.1 and 0 < backend.rtol <= 0.05


def test_slow_compiles_2_4_and_the_second_block_size_are_opt_in():
    assert [n for n in CUDA_ONLY + CPU_AND_CUDA if not get_backend(n).default] == [
        "torch-compile-cuda",
        "torch-compile-cuda-fp16",
        "torch-2:4",
        "torch-2:4-bf16",
        "torch-2:4-cutlass",
        "torch-sparse-bsr-4",
    ]


def test_tolerances_follow_the_precision():
    assert get_backend("torch-dense-bf16").atol > get_backend("torch-dense-fp16").atol > get_backend("torch-cuda-graph").atol
    assert (get_backend("torch-2:4").atol, get_backend("torch-2:4").rtol) == cuda_dense.TOLERANCE["fp16"]
    assert (get_backend("torch-2:4-bf16").atol, get_backend("torch-2:4-bf16").rtol) == cuda_dense.TOLERANCE["bf16"]


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the no-CUDA reasons are not given here")
@pytest.mark.parametrize("name", CUDA_ONLY + CPU_AND_CUDA)
def test_cuda_cases_say_why_they_cannot_run_here(name):
    reason = get_backend(name).unavailable("cuda")
    assert reason and "CUDA" in reason


def test_cpu_cases_run_here():
    assert get_backend("torch-sparse-bsr").unavailable("cpu") is None
    assert "CUDA only" in semi_structured.sparse_unavailable("cpu")


def test_precision_tolerances_hold_for_resnet18_on_the_cpu():
    """The same model preparation the fp16/bf16 CUDA cases use, on the CPU, against fp32 within their tolerance."""
    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        for precision in ("fp16", "bf16"):
            prepared = cuda_dense.prepare_model(model, "cpu", precision, channels_last=True)
            assert next(prepared.parameters()).dtype == cuda_dense.DTYPES[precision]
            assert next(prepared.parameters()).is_contiguous(memory_format=torch.channels_last)
            y = prepared(cuda_dense.prepare_input(x, "cpu", precision)).float()
            atol, rtol = cuda_dense.TOLERANCE[precision]
            torch.testing.assert_close(y, ref, atol=atol, rtol=rtol)
            assert not torch.equal(y, ref)  # it really ran in lower precision


def test_prepare_model_makes_attached_masks_permanent():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten())
    layers = {"0": model[0]}
    keep = Mask({"0": torch.rand(8, 4, 3, 3) > 0.5})
    attach_(layers, keep)
    prepared = cuda_dense.prepare_model(model, "cpu", "fp32", channels_last=False)
    assert not hasattr(prepared[0], "weight_orig")
    assert torch.equal(prepared[0].weight != 0, keep["0"])
    assert hasattr(model[0], "weight_orig")  # the caller's model is untouched


# -- torch.sparse BSR, on the CPU ---------------------------------------------------------------


def test_block_density_counts_blocks_with_any_nonzero():
    m = torch.zeros(4, 8)
    m[0, 0] = 1.0  # block (0, 0)
    m[3, 7] = 2.0  # block (1, 3)
    assert torch_sparse_bsr.block_density(m, 2) == 2 / 8
    assert torch_sparse_bsr.block_density(m, 4) == 2 / 2
    assert torch_sparse_bsr.block_density(torch.zeros(4, 4), 2) == 0.0


def test_bsr_backend_matches_dense_on_a_pruned_resnet18_on_the_cpu():
    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    layers = prunable_layers(model)
    ones = Mask.ones_like(layers)
    attach_(layers, GlobalMagnitude()(layers, ones, int(0.9 * ones.numel)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    backend = get_backend("torch-sparse-bsr-4")
    prepared = backend.prepare(model, x, "cpu", 1)
    convs = prepared.info["convs"]
    assert convs["conv1"].startswith("[Cout, K] = [64, 27]")  # the stem stays a dense conv
    assert sum(c == "converted" for c in convs.values()) == 19  # 16 block convs and 3 downsample convs
    assert all(0.0 < d <= 1.0 for d in prepared.info["block_density"].values())
    assert min(prepared.info["block_density"].values()) < 0.9  # some 4x4 blocks are empty at 90% sparsity
    y = prepared.to_torch(prepared.run(prepared.inputs))
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)


def test_bsr_layers_hold_bsr_weights():
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=True)
    model = nn.Sequential(conv)
    prepared, choices, densities = torch_sparse_bsr.prepare_model(model, "cpu", 16)
    assert choices == {"0": "converted"} and densities == {"0": 1.0}
    assert isinstance(prepared[0], ConvAsMatmul) and prepared[0].weight.layout == torch.sparse_bsr
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), conv(x), atol=1e-5, rtol=1e-5)


# -- on a GPU ----------------------------------------------------------------------------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("name", [n for n in CUDA_ONLY if not n.startswith("torch-2:4")] + CPU_AND_CUDA)
def test_cuda_backend_matches_dense(name):
    backend = get_backend(name)
    if backend.unavailable("cuda"):
        pytest.skip(backend.unavailable("cuda"))
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    prepared = backend.prepare(model, x, "cuda", 1)
    y = prepared.run(prepared.inputs)
    prepared.synchronize()
    torch.testing.assert_close(prepared.to_torch(y), ref, atol=backend.atol, rtol=backend.rtol)


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_graph_replays_new_inputs_through_its_static_buffer():
    model = cuda_dense.prepare_model(small_model(), "cuda", "fp32")
    static = cuda_dense.prepare_input(torch.randn(2, 3, 16, 16), "cuda")
    replay, out = cuda_dense.capture_graph(model, static)
    other = cuda_dense.prepare_input(torch.randn(2, 3, 16, 16), "cuda")
    with torch.inference_mode():
        expected = model(other).clone()
    y = replay(other)
    torch.cuda.synchronize()
    assert y is out
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(static, other)  # the input went through the static buffer
