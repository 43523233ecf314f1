"""One convolution (+ ReLU) alone, in an external engine and in our kernels, one core each.

    python experiments/peer_layers.py PYTHON [--engine deepsparse] [--batch 64] [--rounds 5]

PYTHON is the engine's own interpreter (DeepSparse's venv, as for ``bench.ab --deepsparse-python``).
For each stride-1 3x3 shape of ResNet-18, at the density global magnitude pruning leaves it in the 90%
model, dense and at 10%, one conv + ReLU is exported (opset 13) and run single-threaded in the engine's worker,
its output checked against torch; our kernels run the same conv on 16 images at a time, every variant
this build offers timed round robin. Engine blocks and our rounds alternate: the engine's fastest block
(the median call of 0.3 s of calls) against our fastest single call.
Prints ms per 16 images, and GMAC/s with every weight counted (dense-equivalent) and per nonzero: a
dense-equivalent rate above the machine's multiply-add peak means the engine computes fewer
multiply-adds than a direct convolution does.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from bench.backends.external import _prepare, missing_interpreter
from bench.kernels import Act, ConvGeometry, ConvOp, KINDS, candidate_variants, to_act
from exporters import run_cli
from prune.errors import PruneBenchError

# (channels, plane, density left): layer1 .. layer4's stride-1 convs in the 90% synthetic model, then dense,
# then every layer at 10% (the uniformly pruned model)
SHAPES = ((64, 32, 0.50), (128, 16, 0.34), (256, 8, 0.18), (512, 4, 0.06), (64, 32, 1.0), (128, 16, 1.0),
          (64, 32, 0.10), (128, 16, 0.10), (256, 8, 0.10))


def pruned_conv(c: int, density: float, seed: int) -> nn.Conv2d:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c, c, 3, padding=1)
    with torch.no_grad():
        conv.weight.normal_(generator=g)
        conv.bias.normal_(generator=g)
        if density < 1:
            k = int(round((1 - density) * conv.weight.numel()))
            conv.weight.mul_(conv.weight.abs() > conv.weight.abs().flatten().kthvalue(k).values)
    return conv


def ours(conv: nn.Conv2d, hw: int, density: float) -> dict[str, ConvOp]:
    """Every variant offered for 16 images, one thread, on the conv's layout buffers."""
    c = conv.in_channels
    geom = ConvGeometry.make(Act(c, hw, hw, 16, 1), c, (3, 3), 1, 1, 1)
    inp = to_act(torch.randn(16, c, hw, hw).relu(), geom.inp)
    out = geom.out.alloc()
    return {str(v): ConvOp(geom, conv.weight.data, conv.bias.data, v, inp, out, None, None, True, 1)
            for v in candidate_variants(geom, density, threads=1, everything=True)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/peer_layers.py", description=__doc__.splitlines()[0])
    parser.add_argument("python", help="the engine's interpreter")
    parser.add_argument("--engine", default="deepsparse", choices=("deepsparse", "onnxruntime"))
    parser.add_argument("--batch", type=int, default=64, help="the engine's batch (a multiple of 16)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.batch < 16 or args.batch % 16:
        raise PruneBenchError(f"--batch {args.batch}: give a multiple of 16")
    missing = missing_interpreter(args.python)
    if missing:
        raise PruneBenchError(f"{missing}: give the engine's interpreter (its venv's bin/python)")
    torch.set_num_threads(1)
    print(f"| shape | density | {args.engine} ms | dense-eq GMAC/s | nonzero GMAC/s | ours, best sparse | ms | "
          "ours, best dense | ms | nonzero GMAC/s, ours best |")
    print("|---|---:|---:|---:|---:|---|---:|---|---:|---:|")
    for i, (c, hw, density) in enumerate(SHAPES):
        conv = pruned_conv(c, density, i)
        model = nn.Sequential(conv, nn.ReLU()).eval()
        x = torch.randn(args.batch, c, hw, hw).relu()
        peer = _prepare(model, x, 1, args.python, args.engine)
        try:
            with torch.inference_mode():
                expected = model(x)
            if not torch.allclose(peer.to_torch(peer.run(None)), expected, atol=1e-3, rtol=1e-3):
                raise PruneBenchError(f"{args.engine} does not match torch on {c}x{hw}x{hw}: not timed")
            ops = ours(conv, hw, density)
            best = {name: float("inf") for name in ops}
            peer_s = float("inf")
            for _ in range(args.rounds):
                peer_s = min(peer_s, peer.time_block(0.3))
                for name, op in ops.items():
                    start = time.perf_counter()
                    op()
                    best[name] = min(best[name], time.perf_counter() - start)
        finally:
            peer.close()
        dense_macs = c * c * 9 * hw * hw * 16  # per 16 images
        nonzero = int((conv.weight != 0).sum()) * hw * hw * 16
        peer_ms = peer_s * 1e3 * 16 / args.batch
        kinds = {name: KINDS[name.split("(")[0]].skips_zeros for name in ops}
        sparse = min((n for n in ops if kinds[n]), key=best.get)
        dense = min((n for n in ops if not kinds[n]), key=best.get)
        top = min(best.values())
        print(f"| {c}x{hw}x{hw} | {density:.0%} | {peer_ms:.2f} | {dense_macs / peer_ms / 1e6:.1f} | "
              f"{nonzero / peer_ms / 1e6:.1f} | {sparse} | {best[sparse] * 1e3:.2f} | {dense} | "
              f"{best[dense] * 1e3:.2f} | {nonzero / top / 1e9:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
