"""Parity before timing: a backend's output must match dense fp32 PyTorch, and the check must be able to fail."""

from __future__ import annotations

import torch

from prune.errors import PruneBenchError


class ParityError(PruneBenchError):
    """A backend's output does not match dense PyTorch, or the check could not tell."""


def check_parity(got: torch.Tensor, expected: torch.Tensor, other: torch.Tensor, atol: float, rtol: float, what: str):
    """Fail unless ``got`` matches ``expected`` within the tolerance, and the match could not happen by accident.

    ``other`` is the dense output for a different input. If it too lies within the
    tolerance of ``expected``, the model's logits barely depend on the input (e.g.
    an fc pruned to nothing leaves only the bias) and a backend returning garbage
    of the right shape could pass: that fails as well, saying why.
    Raises ``ParityError`` (one line) on either failure.
    """
    if torch.allclose(other, expected, atol=atol, rtol=rtol):
        spread = float((other - expected).abs().max())
        raise ParityError(
            f"{what}: the parity check would pass trivially: dense logits for two different inputs differ by at most "
            f"{spread:.3g}, within the tolerance (atol {atol:g}, rtol {rtol:g}); the model's output does not depend "
            "on its input (is fc pruned to nothing?)"
        )
    try:
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    except AssertionError as e:
        detail = " ".join(str(e).split())  # assert_close's report, on one line
        raise ParityError(f"{what} differs from dense PyTorch: {detail}") from None


# cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa, as fp16's): on CUDA an fp32 backend is held to
# fp16's tolerance against the CPU fp32 reference while TF32 is allowed; the case records which applied. (5e-3 was
# too tight: on an H200 one logit in 2560 of a 50%-sparse model at batch 256 was 6.3e-3 off in TF32.)
TF32_ATOL, TF32_RTOL = 2e-2, 1e-2


def parity_tolerance(backend, device: str) -> tuple[float, float, bool]:
    """(atol, rtol, tf32) for ``backend`` on ``device``: the backend's own, widened to TF32's where it applies."""
    tf32 = device == "cuda" and bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    if tf32:
        return max(backend.atol, TF32_ATOL), max(backend.rtol, TF32_RTOL), True
    return backend.atol, backend.rtol, False


def prepare_checked(backend, bench_model, batch_size: int, device: str, threads: int, what: str):
    """Prepare ``backend`` on ``bench_model`` for the suite's seeded batch and check its output before any timing.

    Returns ``(prepared, (atol, rtol, tf32), max_abs_diff)``; a backend with its own
    criterion (``Backend.check``, INT8) is held to that, and atol/rtol are None. ``NotApplicable`` from
    the backend passes through (the caller says whether that is a skip or an
    error); a mismatch raises ``ParityError``. The parity call is the prepared
    function's first call, so it also warms it up.
    """
    expected = bench_model.reference(batch_size, seed=0)
    other = bench_model.reference(batch_size, seed=1)  # a different input: proves the check is not trivial
    prepared = backend.prepare(bench_model.model, bench_model.example(batch_size, seed=0), device, threads)
    own = getattr(backend, "check", None)
    atol, rtol, tf32 = (None, None, False) if own else parity_tolerance(backend, device)
    with torch.inference_mode():
        got = prepared.to_torch(prepared.run(prepared.inputs))
        prepared.synchronize()
    if own:
        own(got, expected, other, what)
    else:
        check_parity(got, expected, other, atol, rtol, what)
    return prepared, (atol, rtol, tf32), float((got - expected).abs().max())
