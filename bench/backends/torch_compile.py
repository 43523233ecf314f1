"""``torch.compile`` (Inductor, weights frozen) of the BN-folded model on the CPU: the compiler's best dense code.

(CUDA has its own compiled baselines in ``bench.backends.cuda_dense``.)
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from bench.backends import Backend, Prepared
from bench.fold import fold_batchnorm


def _unavailable(device: str) -> str | None:
    if device != "cpu":
        return "torch-compile is the CPU compiled baseline (torch-compile-cuda covers CUDA)"
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++), and none is on PATH"
    try:
        import torch._inductor  # noqa: F401  (present in every torch >= 2.0 wheel, but a slim build may lack it)
    except Exception as e:
        return f"torch.compile's Inductor backend cannot be imported here ({type(e).__name__}: {e})"
    return None


def _prepare(model: nn.Module, example: torch.Tensor, device: str, threads: int) -> Prepared:
    from torch._inductor import config as inductor_config

    torch.set_num_threads(threads)
    folded = fold_batchnorm(model.cpu())
    inputs = example.cpu()
    compiled = torch.compile(folded, dynamic=False)

    def run(x):
        with torch.inference_mode():
            return compiled(x)

    # compile here, outside the timed calls; freezing turns the weights into constants,
    # so Inductor can prepack them for oneDNN (patched for this compile only)
    with inductor_config.patch(freezing=True):
        run(inputs)
    return Prepared(run=run, inputs=inputs, info={"inductor_freezing": True})


BACKEND = Backend(
    name="torch-compile",
    dense=True,
    devices=("cpu",),
    prepare=_prepare,
    unavailable=_unavailable,
    atol=1e-4,
    rtol=1e-4,
    description="torch.compile (Inductor, frozen weights) of the BN-folded dense model",
)
