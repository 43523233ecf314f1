"""The sparse direct convolution kernel against hand-computed values and torch's conv2d."""

from __future__ import annotations

import dataclasses
import gc
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import kernels as K
from bench.kernels import build, jit
from bench.kernels import (
    KERNELS,
    PANEL_TILES,
    ROWS_V,
    SWEEP_TILES,
    Act,
    ConvGeometry,
    PackedPanels,
    PackedRows,
    PackedSweep,
    PackedWeights,
    Variant,
    WINO_TILES,
    from_act,
    sparse_conv2d,
    to_act,
)


pytestmark = pytest.mark.usefixtures("isa")  # every test under each instruction set (tests/conftest.py)


VARIANTS = [Variant("sparse" if r == 1 else "grouped", r, v) for r, v in KERNELS] + [
    Variant("dense", 8, 2),
    Variant("dense", 4, 1),
    Variant("sparse", 1, 4, block=32),
    Variant("sparse", 1, 8, chunk=2, tiles=True),
    Variant("dense", 8, 3, block=40, chunk=3, tiles=True),
    Variant("torch"),
] + [Variant("panel", r, v) for r, v in PANEL_TILES] + [Variant("panel", 4, 4, block=40, chunk=2, tiles=True)]
# the rows kernel: stride-1 3-wide convolutions of 16 images
ROWS = [Variant("rows", 1, v) for v in ROWS_V] + [Variant("rows", 1, 6, chunk=3, tiles=True),
                                                  Variant("rows", 1, 4, block=64, chunk=2)]


def random_case(seed: int, n: int, cin: int, cout: int, h: int, w: int, k: int = 3, stride: int = 1,
                sparsity: float = 0.0, residual: bool = False):
    """A seeded input, weights zeroed at random with probability ``sparsity``, a bias, a residual (or None) and
    what conv2d (padding k // 2) plus the residual gives: (x, weight, bias, residual, expected)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, k, k, generator=g) * (torch.rand(cout, cin, k, k, generator=g) >= sparsity)
    bias = torch.randn(cout, generator=g)
    expected = F.conv2d(x, weight, bias, stride=stride, padding=k // 2)
    res = torch.randn(expected.shape, generator=g) if residual else None
    return x, weight, bias, res, expected if res is None else expected + res


def test_layout_round_trip_keeps_border_zero():
    x = torch.randn(3, 2, 4, 5)
    act = Act(2, 4, 5, 3, 1)
    buf = to_act(x, act)
    assert torch.equal(from_act(buf, act), x)
    grid = act.grid(buf)
    # top and bottom rows, and the one strip between rows that borders both sides, are zero
    assert grid[:, 0].abs().sum() == 0 and grid[:, -1].abs().sum() == 0
    assert grid[:, :, 0].abs().sum() == 0 and act.pitch == 5 + 1
    assert buf[:, grid[0].numel() :].abs().sum() == 0
    # the mask is 1 exactly on image elements
    assert int(act.mask().sum()) == 4 * 5 * 3


def test_single_centre_weight_scales_the_image():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 2.0
    y = sparse_conv2d(x, w, torch.tensor([1.0]), padding=1)
    assert torch.equal(y, 2 * x + 1)


def test_corner_tap_shifts_the_image():
    # out[y, x] = in[y - 1, x - 1] (zero outside): the top-left tap of a padded 3x3
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 0, 0] = 1.0
    y = sparse_conv2d(x, w, padding=1)
    expected = torch.tensor([[0.0, 0, 0], [0, 1, 2], [0, 4, 5]]).view(1, 1, 3, 3)
    assert torch.equal(y, expected)


def test_two_channels_stride_two_by_hand():
    # channel 0 weighted 1 at the centre, channel 1 weighted -1 at the right tap; stride 2 picks even positions
    x = torch.stack([torch.arange(16.0).view(4, 4), torch.full((4, 4), 10.0)]).unsqueeze(0)
    w = torch.zeros(1, 2, 3, 3)
    w[0, 0, 1, 1] = 1.0
    w[0, 1, 1, 2] = -1.0
    y = sparse_conv2d(x, w, stride=2, padding=1)
    # out[i, j] = x0[2i, 2j] - x1[2i, 2j + 1]
    expected = torch.tensor([[0.0 - 10, 2 - 10], [8 - 10, 10 - 10]]).view(1, 1, 2, 2)
    assert torch.equal(y, expected)


def test_fully_pruned_layer_gives_bias_residual_relu():
    x = torch.randn(2, 3, 5, 5)
    w = torch.zeros(4, 3, 3, 3)
    b = torch.tensor([1.0, -1.0, 0.5, -0.5])
    res = torch.randn(2, 4, 5, 5)
    y = sparse_conv2d(x, w, b, padding=1, residual=res, relu=True)
    assert torch.equal(y, (res + b.view(1, 4, 1, 1)).relu())


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_every_variant_matches_conv2d(variant):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 7)
    w = torch.randn(11, 5, 3, 3) * (torch.rand(11, 5, 3, 3) > 0.6)
    w[3] = 0  # an output channel with no weights
    b = torch.randn(11)
    res = torch.randn(2, 11, 9, 7)
    y = sparse_conv2d(x, w, b, stride=1, padding=1, residual=res, relu=True, variant=variant)
    torch.testing.assert_close(y, (F.conv2d(x, w, b, padding=1) + res).relu(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw, stride", [(4, 1), (8, 1), (16, 2), (32, 1), (9, 1)])
def test_channels_kernel_matches_conv2d(hw, stride):
    torch.manual_seed(4)
    x = torch.randn(1, 6, hw, hw)
    w = torch.randn(19, 6, 3, 3) * (torch.rand(19, 6, 3, 3) > 0.3)  # 19: a partial group of 16 channels
    b = torch.randn(19)
    expected = F.conv2d(x, w, b, stride=stride, padding=1)
    res = torch.randn_like(expected)
    if expected.shape[-1] not in (4, 8) and expected.shape[-1] % 16:
        with pytest.raises(K.PruneBenchError, match="channels kernel"):
            sparse_conv2d(x, w, b, stride=stride, padding=1, variant=Variant("channels", 16, 1))
        return
    y = sparse_conv2d(x, w, b, stride=stride, padding=1, residual=res, relu=True, variant=Variant("channels", 16, 1))
    torch.testing.assert_close(y, (expected + res).relu(), atol=1e-5, rtol=1e-5)


def test_threads_do_not_change_the_result():
    torch.manual_seed(1)
    x = torch.randn(3, 8, 6, 6)
    w = torch.randn(16, 8, 3, 3) * (torch.rand(16, 8, 3, 3) > 0.8)
    one = sparse_conv2d(x, w, stride=2, padding=1, threads=1)
    two = sparse_conv2d(x, w, stride=2, padding=1, threads=2)
    assert torch.equal(one, two)


def test_packed_weights_keep_only_nonzeros():
    torch.manual_seed(2)
    w = torch.randn(64, 32, 3, 3) * (torch.rand(64, 32, 3, 3) > 0.9)
    geom = ConvGeometry.make(Act(32, 8, 8, 1, 1), 64, (3, 3), 1, 1, 1)
    packed = PackedWeights.pack(w, None, geom.tap_offsets(), 1)
    assert packed.src.numel() == int((w != 0).sum())
    assert sorted(packed.val.flatten().tolist()) == sorted(w[w != 0].tolist())
    assert packed.nbytes < K.dense_nbytes(w, 64) / 4
    dense = PackedWeights.pack(w, None, geom.tap_offsets(), 8, dense=True)
    assert dense.src.numel() == 32 * 9 * 8  # every (input channel, tap) once per group of 8


def test_rows_packing_by_hand():
    # one output channel, one input channel: row 0 has taps {0, 2}, row 1 tap {1}, row 2 all three
    w = torch.tensor([[[[1.0, 0, 2], [0, 3, 0], [4, 5, 6]]]])
    geom = ConvGeometry.make(Act(1, 5, 5, 16, 1), 1, (3, 3), 1, 1, 1)
    off = geom.tap_offsets()
    p = PackedRows.pack(w, None, off)
    # classes in order: single, {0,1}/{1,2}, {0,2}, triple; one entry each except the empty adjacent-pair class
    assert p.rptr.tolist() == [[0, 1, 1, 2, 3]]
    assert p.vptr.tolist() == [[0, 1, 1, 3]]
    assert p.src.tolist() == [off[0, 1, 1], off[0, 0, 0], off[0, 2, 0]]
    assert p.val.tolist() == [3.0, 1.0, 2.0, 4.0, 5.0, 6.0]
    # taps {1, 2} start at tap 1; input chunks split the entries of each output channel
    w2 = torch.zeros(2, 4, 3, 3)
    w2[1, 3, 0, 1:] = torch.tensor([7.0, 8.0])
    w2[0, 0, 2, 0] = 9.0
    geom2 = ConvGeometry.make(Act(4, 5, 5, 16, 1), 2, (3, 3), 1, 1, 1)
    p2 = PackedRows.pack(w2, None, geom2.tap_offsets(), chunk=2)
    assert p2.nchunks == 2 and p2.rptr.shape == (4, 5)
    assert p2.rptr.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 2, 2, 2]]
    assert p2.src.tolist() == [geom2.tap_offsets()[0, 2, 0], geom2.tap_offsets()[3, 0, 1]]
    assert p2.val.tolist() == [9.0, 7.0, 8.0]
    torch.manual_seed(2)
    big = torch.randn(64, 32, 3, 3) * (torch.rand(64, 32, 3, 3) > 0.9)
    packed = PackedRows.pack(big, None, ConvGeometry.make(Act(32, 8, 8, 16, 1), 64, (3, 3), 1, 1, 1).tap_offsets())
    assert packed.val.numel() == int((big != 0).sum())  # every nonzero once, no zeros stored
    assert packed.nbytes < K.dense_nbytes(big, 64) / 3  # 10% of the values, plus offsets and class pointers


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cin=st.integers(1, 9),
    cout=st.integers(1, 9),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    sparsity=st.sampled_from([0.0, 0.3, 0.6, 0.9, 1.0]),
    variant=st.sampled_from(ROWS),
    residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rows_kernel_matches_conv2d_on_random_shapes(cin, cout, h, w, sparsity, variant, residual, seed):
    x, weight, bias, res, expected = random_case(seed, 16, cin, cout, h, w, sparsity=sparsity, residual=residual)
    got = sparse_conv2d(x, weight, bias, padding=1, residual=res, relu=True, variant=variant, threads=2)
    torch.testing.assert_close(got, expected.relu(), atol=1e-4, rtol=1e-4)


def test_sweep_packing_by_hand():
    # two output channels, four input channels in chunks of two: entries by (chunk, output channel, input, tap)
    w = torch.zeros(2, 4, 3, 3)
    w[0, 0, 0, 0], w[0, 3, 1, 1], w[1, 1, 2, 2], w[1, 2, 0, 1], w[1, 0, 1, 0] = 1.0, 2.0, 3.0, 4.0, 5.0
    geom = ConvGeometry.make(Act(4, 5, 5, 16, 1), 2, (3, 3), 1, 1, 1)
    off = geom.tap_offsets()
    p = PackedSweep.pack(w, torch.tensor([0.5, -0.5]), off, chunk=2)
    assert p.nchunks == 2 and p.cout == 2
    # chunk 0: channel 0 reads (0, tap 0); channel 1 reads (0, tap 3) and (1, tap 8); chunk 1: channel 0 (3, tap 4),
    # channel 1 (2, tap 1)
    assert p.ends.tolist() == [1, 3, 4, 5]
    assert p.src.tolist() == [off[0, 0, 0], off[0, 1, 0], off[1, 2, 2], off[3, 1, 1], off[2, 0, 1]]
    assert p.val.tolist() == [1.0, 5.0, 3.0, 2.0, 4.0] and p.bias.tolist() == [0.5, -0.5]
    whole = PackedSweep.pack(w, None, off)  # one chunk: each channel's entries in input order
    assert whole.nchunks == 1 and whole.ends.tolist() == [2, 5] and whole.bias.tolist() == [0.0, 0.0]


# the sweep kernel: 16 images, every tile compiled, chunks from one channel to all
SWEEP = [Variant("sweep", r, v, chunk=c, tiles=True) for r, v in SWEEP_TILES for c in (0, 1, 3)]
# what the 16-image kernels' random cases draw besides their sizes and variant
CASE16 = dict(k=st.sampled_from([1, 3]), stride=st.integers(1, 2), sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
              residual=st.booleans(), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.integers(1, 9), cout=st.integers(1, 9), hw=st.integers(1, 7), variant=st.sampled_from(SWEEP), **CASE16)
def test_sweep_kernel_matches_conv2d_on_random_shapes(cin, cout, hw, k, stride, sparsity, variant, residual, threads,
                                                      seed):
    x, weight, bias, res, expected = random_case(seed, 16, cin, cout, hw, hw, k, stride, sparsity, residual)
    run = lambda: sparse_conv2d(x, weight, bias, stride=stride, padding=k // 2, residual=res, relu=True,
                                variant=variant, threads=threads)
    if expected.shape[2] % variant.R:  # a tile of two rows needs bands of two whole rows
        with pytest.raises(K.PruneBenchError, match="multiple of 2"):
            run()
        return
    torch.testing.assert_close(run(), expected.relu(), atol=1e-4, rtol=1e-4)


def test_sweep_is_offered_for_sixteen_images_in_tiles_that_fit():
    def offered(hw, density, regs=32, c=256):
        geom = ConvGeometry.make(Act(c, hw, hw, 16, 1), c, (3, 3), 1, 1, 1)
        return sorted({(v.R, v.V, v.chunk) for v in K.candidate_variants(geom, density, 2, False, regs)
                       if v.kind == "sweep"})

    assert offered(8, 0.1) == [(1, v, c) for v in (4, 8) for c in (8, 16, 32)]
    assert offered(32, 0.1, regs=8) == [(1, v, c) for v in (3, 6) for c in (8, 16, 32)]
    # rows of 4 vectors: one row of 4, or two rows at once
    assert offered(4, 0.1) == [(r, 4, c) for r in (1, 2) for c in (8, 16, 32)]
    assert offered(4, 0.1, regs=8) == sorted([(1, 4, c) for c in (8, 16, 32)] + [(2, 2, c) for c in (8, 16, 32)])
    assert {c for _, _, c in offered(8, 0.5, c=8)} == set()  # no chunk smaller than its 8 channels
    assert all(K.fits_registers("sweep", r, v, regs) for regs in (32, 8) for hw in (4, 8, 32)
               for r, v, _ in offered(hw, 0.1, regs))
    assert not K.fits_registers("sweep", 2, 4, 8)
    one = ConvGeometry.make(Act(256, 8, 8, 1, 1), 256, (3, 3), 1, 1, 1)
    assert offered(8, 0.0) == [] and not [v for v in K.candidate_variants(one, 0.1, 2) if v.kind == "sweep"]
    with pytest.raises(K.PruneBenchError, match="sweep kernel takes 16 images"):
        K.ConvOp(one, torch.randn(256, 256, 3, 3), None, Variant("sweep", 1, 4, chunk=8, tiles=True),
                 one.inp.alloc(), None, None, None, False, 1)


# the jit kernel: code written per conv; groups of R channels (partial ones too), chunks from one channel to all,
# two positions per turn where a row has an even width
JIT = [Variant("jit", r, v, chunk=c) for r, v in ((24, 1), (6, 1), (3, 1), (14, 2), (2, 2), (1, 1)) for c in (0, 1, 16)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.integers(1, 40), cout=st.integers(1, 30), hw=st.integers(1, 9), variant=st.sampled_from(JIT),
       rows=st.sampled_from([0, 1, 3]), **CASE16)
def test_jit_kernel_matches_conv2d_on_random_shapes(cin, cout, hw, k, stride, sparsity, variant, residual, threads,
                                                    rows, seed):
    x, weight, bias, res, expected = random_case(seed, 16, cin, cout, hw, hw, k, stride, sparsity, residual)
    wout = expected.shape[3]
    v = dataclasses.replace(variant, block=rows * (wout + 1) * 16)  # calls of whole rows: one, three or all
    run = lambda: sparse_conv2d(x, weight, bias, stride=stride, padding=k // 2, residual=res, relu=True,
                                variant=v, threads=threads)
    if not K.fits_registers("jit", v.R, v.V):
        with pytest.raises(K.PruneBenchError, match="fits the avx2 build's registers"):
            run()
        return
    if wout % v.V:  # two positions per turn need rows of an even width
        with pytest.raises(K.PruneBenchError, match="multiple of 2"):
            run()
        return
    torch.testing.assert_close(run(), expected.relu(), atol=1e-4, rtol=1e-4)


def test_jit_code_loads_each_column_once_for_its_group():
    # two channels in one group; input channels 0 and 1 in chunks of one: columns (0, tap 0) read by both channels,
    # (0, tap 8) by channel 1, (1, tap 4) by channel 0
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0, 0, 0], w[1, 0, 0, 0], w[1, 0, 2, 2], w[0, 1, 1, 1] = 1.0, 2.0, 3.0, 4.0
    geom = ConvGeometry.make(Act(3, 5, 5, 16, 1), 2, (3, 3), 1, 1, 1)
    off, o = geom.tap_offsets(), geom.out
    asm, index = jit.assembly(w, None, off, o.stride, (o.W, o.pitch * o.N), 2, 1, 1, "avx512")
    assert index == [0, 1, 2]  # chunk 2 (input channel 2) has no nonzeros but ends the sum: it still runs
    body = asm.split("pbj_0_0:")[1].split("pbj_1_0:")[0]
    loads = [line.split()[1] for line in body.splitlines() if "(%rdi)" in line]
    assert loads == [f"{4 * off[0, 0, 0]}(%rdi),", f"{4 * off[0, 2, 2]}(%rdi),"]  # two columns, one load each
    fmas = [line for line in body.splitlines() if "vfmadd231ps" in line]
    assert [f.split()[-1] for f in fmas] == ["%zmm0", "%zmm1", "%zmm1"]  # (0, tap 0) into both, (0, tap 8) into 1
    assert "vbroadcastss pbj_bias" in body and "vmulps" not in body  # the first chunk starts from the bias
    last = asm.split("pbj_2_0:")[1]
    assert "vfmadd231ps" not in last.split("pbj_w")[0] and "vmaxps" in last and "vmulps" in last
    # a middle chunk with nothing to add is skipped
    w3 = torch.zeros(2, 3, 3, 3)
    w3[0, 0, 1, 1] = w3[1, 2, 1, 1] = 1.0
    _, index = jit.assembly(w3, None, off, o.stride, (o.W, o.pitch * o.N), 2, 1, 1, "avx2")
    assert index == [0, None, 1]


@pytest.mark.parametrize("kind", ["jit", "winograd"])
def test_residual_added_in_place_over_the_output(kind):
    # the output buffer is the residual's: each element's residual must be read before anything is written there,
    # also where partial sums pass between input chunks through the output (jit with chunks of one channel)
    x, weight, bias, res, expected = random_case(7, 16, 5, 26, 8, 8, sparsity=0.6, residual=True)
    geom = ConvGeometry.make(Act(5, 8, 8, 16, 1), 26, (3, 3), 1, 1, 1)
    regs = K.vector_registers()
    if kind == "jit":
        variants = [Variant("jit", r, 1, chunk=c) for r in (24, 6) for c in (0, 1) if K.fits_registers("jit", r, 1)]
    else:
        variants = [Variant("winograd", r, v) for r, v in WINO_TILES if K.fits_registers("winograd", r, v, regs)][:2]
    if not variants or build.built_isa() == "generic":
        pytest.skip(f"the {build.built_isa()} build has no {kind} kernel")
    inp = to_act(x, geom.inp)
    for v in variants:
        out = to_act(res, geom.out)
        op = K.ConvOp(geom, weight, bias, v, inp, out, None, out, True, 1)
        assert op.in_place
        op()
        torch.testing.assert_close(from_act(out, geom.out), expected.relu(), atol=1e-4, rtol=1e-4, msg=str(v))
    with pytest.raises(K.PruneBenchError, match="cannot add its residual in place"):
        K.ConvOp(geom, weight, bias, Variant("sweep", 1, 4, chunk=8, tiles=True), inp, out, None, out, True, 1)


def test_avx2_jit_code_loads_weights_four_at_a_time():
    # one column read by all six channels of the group: six weights, loaded as two quads, each shuffled out
    w = torch.zeros(6, 1, 3, 3)
    w[:, 0, 1, 1] = torch.arange(1.0, 7.0)
    geom = ConvGeometry.make(Act(1, 4, 4, 16, 1), 6, (3, 3), 1, 1, 1)
    off, o = geom.tap_offsets(), geom.out
    asm, _ = jit.assembly(w, None, off, o.stride, (o.W, o.pitch * o.N), 6, 1, 0, "avx2")
    body = asm.split("pbj_0_0:")[1].split("pbj_0_0_end:")[0].splitlines()
    assert sum("vbroadcastf128" in line for line in body) == 2 and not any("vbroadcastss" in line and "(%r11)" in line
                                                                            for line in body)
    assert [line.split()[1] for line in body if "vshufps" in line] == ["$0,", "$85,", "$170,", "$255,", "$0,", "$85,"]
    table = asm.split("pbj_w_0_0:")[1].split(":")[0]
    assert table.count(",") + table.count(".long") == 8  # six weights and two zeros: whole quads


# what only AVX-512 has, in AT&T syntax: 512-bit and upper-16 registers, mask registers, embedded broadcasts
AVX512_OPERANDS = re.compile(r"%zmm|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|%k[0-7]\b|\{1to\d+\}")
# an instruction (a line of objdump that names one) whose first byte, after an address-size or segment prefix at
# most, is 0x62: the EVEX prefix, in 64-bit code always an AVX-512 instruction
EVEX = re.compile(r"^\s*[0-9a-f]+:\t(?:6[457] )?62 [0-9a-f ]*\t\S", re.MULTILINE)


def test_avx2_build_runs_no_avx512_instruction():
    # the AVX2 build also runs on CPUs with AVX-512, where a stray 512-bit instruction would go unnoticed until an
    # AVX2-only CPU faults on it: the generated code and the compiled kernels are read for any
    torch.manual_seed(0)
    w = torch.randn(12, 8, 3, 3) * (torch.rand(12, 8, 3, 3) < 0.3)
    geom = ConvGeometry.make(Act(8, 4, 4, 16, 1), 12, (3, 3), 1, 1, 1)
    off, o = geom.tap_offsets(), geom.out
    for in_place in (False, True):
        asm, _ = jit.assembly(w, torch.randn(12), off, o.stride, (o.W, o.pitch * o.N), 6, 1, 4, "avx2",
                              in_place=in_place)
        assert "vfmadd231ps" in asm and not AVX512_OPERANDS.search(asm)
    if "avx2" not in build.cpu_isas():
        pytest.skip("this CPU cannot run the AVX2 build, so it is not built here to be read")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("reading the compiled AVX2 kernels needs objdump (binutils)")
    text = subprocess.run([objdump, "-d", build.kernel_module("avx2").__file__], capture_output=True, text=True,
                          check=True).stdout
    assert "vfmadd231ps" in text  # it is the vectorised build
    assert not AVX512_OPERANDS.search(text) and not EVEX.search(text)


def test_jit_code_is_unloaded_with_its_pack():
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux's /proc/self/maps to see which libraries are loaded")
    loaded = lambda: set(re.findall(r"prunebench-jit-\w+", maps.read_text()))
    gc.collect()
    before = loaded()  # packs of earlier tests still alive
    geom = ConvGeometry.make(Act(8, 4, 4, 16, 1), 8, (3, 3), 1, 1, 1)
    o = geom.out
    packs = [jit.PackedJit.pack(torch.randn(8, 8, 3, 3), None, geom.tap_offsets(), o.stride, (o.W, o.pitch * o.N), 6, 1,
                                0, "avx2") for _ in range(3)]
    assert len(loaded() - before) == 3  # each pack's library, mapped from a folder already removed
    del packs
    gc.collect()
    assert not loaded() - before


def test_jit_is_offered_for_sixteen_sparse_images():
    def offered(c, density, regs=32, n=16):
        geom = ConvGeometry.make(Act(c, 8, 8, n, 1), c, (3, 3), 1, 1, 1)
        return sorted((v.R, v.V, v.chunk) for v in K.candidate_variants(geom, density, 1, False, regs)
                      if v.kind == "jit")

    assert offered(256, 0.1) == [(24, 1, 16), (24, 1, 32)]
    assert offered(256, 0.1, regs=8) == [(6, 1, 16), (6, 1, 32)]
    assert offered(16, 0.3) == [(24, 1, 0)]  # no chunk as large as the input's channels
    assert offered(256, 0.0) == offered(256, 0.5) == offered(256, 0.1, n=1) == []
    assert K.fits_registers("jit", 24, 1, 32) and K.fits_registers("jit", 6, 1, 8)
    assert not K.fits_registers("jit", 31, 1, 32) and not K.fits_registers("jit", 7, 1, 8)
    one = ConvGeometry.make(Act(8, 8, 8, 1, 1), 8, (3, 3), 1, 1, 1)
    with pytest.raises(K.PruneBenchError, match="jit kernel takes 16 images"):
        K.ConvOp(one, torch.randn(8, 8, 3, 3), None, Variant("jit", 6, 1), one.inp.alloc(), None, None, None, False, 1)


def test_panel_packing_by_hand():
    # two output channels (one group of R = 2), two input channels; columns (input channel, tap) by pattern:
    # (0, tap 0) both channels (pattern 3), (0, tap 8) channel 1 only (pattern 2), (1, tap 4) channel 0 only (1)
    w = torch.zeros(2, 2, 3, 3)
    w[0, 0, 0, 0], w[1, 0, 0, 0], w[1, 0, 2, 2], w[0, 1, 1, 1] = 1.0, 2.0, 3.0, 4.0
    geom = ConvGeometry.make(Act(2, 5, 5, 16, 1), 2, (3, 3), 1, 1, 1)
    off = geom.tap_offsets()
    p = PackedPanels.pack(w, None, off, 2)
    assert p.pptr.tolist() == [[0, 0, 1, 2, 3]]  # pattern p's entries are [pptr[p], pptr[p + 1])
    assert p.vptr.tolist() == [[0, 0, 1, 2]]  # popcount(p) values per entry
    assert p.src.tolist() == [off[1, 1, 1], off[0, 2, 2], off[0, 0, 0]]
    assert p.val.tolist() == [4.0, 3.0, 1.0, 2.0]  # each column's weights in channel order, no zeros filled in
    # input chunks of one channel: the group's entries split by the channel they read
    c = PackedPanels.pack(w, None, off, 2, chunk=1)
    assert c.nchunks == 2 and c.pptr.tolist() == [[0, 0, 0, 1, 2], [2, 2, 3, 3, 3]]
    assert c.src.tolist() == [off[0, 2, 2], off[0, 0, 0], off[1, 1, 1]]
    # a last, partial group of R = 4 (three channels): the missing channel adds no bit
    torch.manual_seed(4)
    big = torch.randn(7, 16, 3, 3) * (torch.rand(7, 16, 3, 3) > 0.7)
    packed = PackedPanels.pack(big, None, ConvGeometry.make(Act(16, 6, 6, 16, 1), 7, (3, 3), 1, 1, 1).tap_offsets(), 4)
    assert packed.val.numel() == int((big != 0).sum())  # every nonzero once
    assert packed.pptr.shape == (2, 17)
    assert packed.pptr[1, 8] == packed.pptr[1, 16]  # the second group's patterns use only the low three bits


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.sampled_from([1, 16]),
    cin=st.integers(1, 9),
    cout=st.integers(1, 11),
    hw=st.integers(1, 7),
    k=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    tile=st.sampled_from(PANEL_TILES),
    chunk=st.integers(0, 4),
    tiles=st.booleans(),
    residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_panel_kernel_matches_conv2d_on_random_shapes(n, cin, cout, hw, k, stride, sparsity, tile, chunk, tiles,
                                                      residual, seed):
    x, weight, bias, res, expected = random_case(seed, n, cin, cout, hw, hw, k, stride, sparsity, residual)
    variant = Variant("panel", *tile, chunk=chunk, tiles=tiles)
    got = sparse_conv2d(x, weight, bias, stride=stride, padding=k // 2, residual=res, relu=True, variant=variant,
                        threads=2)
    torch.testing.assert_close(got, expected.relu(), atol=1e-4, rtol=1e-4)


def test_panel_kernel_is_offered_for_one_picture_with_weights_to_share():
    one = ConvGeometry.make(Act(64, 32, 32, 1, 1), 64, (3, 3), 1, 1, 1)
    batch = ConvGeometry.make(Act(64, 32, 32, 16, 1), 64, (3, 3), 1, 1, 1)
    offered = [v for v in K.candidate_variants(one, 0.5, threads=2) if v.kind == "panel"]
    assert offered and all(not v.tiles and (v.R, v.V) in PANEL_TILES for v in offered)  # threads split the groups
    assert not [v for v in K.candidate_variants(batch, 0.5, threads=2) if v.kind == "panel"]
    assert not [v for v in K.candidate_variants(one, 0.02, threads=2) if v.kind == "panel"]


def test_winograd_weight_transform_gives_a_convolution():
    # F(4, 3) in one dimension: A^T [(G g) * (B^T d)] is the correlation of 6 inputs d with the 3 taps g; the kernel
    # applies B^T and A^T (Lavin and Gray 2016) in both dimensions, the packing G
    from bench.kernels.pack import WINO_G

    bt = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                       [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
    at = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                      dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    d, taps = torch.randn(6, dtype=torch.float64, generator=g), torch.randn(3, dtype=torch.float64, generator=g)
    torch.testing.assert_close(at @ ((WINO_G @ taps) * (bt @ d)), torch.stack([d[i : i + 3] @ taps for i in range(4)]))
    # packed as [point][group][input channel][R], zeros in a last, partial group
    w = torch.randn(5, 3, 3, 3, generator=g)
    p = K.PackedWinograd.pack(w, None, 4)
    assert p.u.shape == (36, 2, 3, 4) and p.cout == 5 and p.bias.tolist() == [0.0] * 5
    u = torch.einsum("ik,ockl,jl->ijoc", WINO_G, w.double(), WINO_G).reshape(36, 5, 3)
    torch.testing.assert_close(p.u[:, 1, :, 0].double(), u[:, 4], atol=1e-6, rtol=1e-6)
    assert p.u[:, 1, :, 1:].abs().sum() == 0
    with pytest.raises(K.PruneBenchError, match="3x3"):
        K.PackedWinograd.pack(torch.randn(2, 2, 1, 1), None, 4)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cin=st.integers(1, 9),
    cout=st.integers(1, 11),
    h=st.sampled_from([4, 8, 12]),
    w=st.sampled_from([4, 8, 16]),
    sparsity=st.sampled_from([0.0, 0.5, 1.0]),
    tile=st.sampled_from(WINO_TILES),
    residual=st.booleans(),
    relu=st.booleans(),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_winograd_kernel_matches_conv2d_on_random_shapes(cin, cout, h, w, sparsity, tile, residual, relu, threads,
                                                         seed):
    x, weight, bias, res, expected = random_case(seed, 16, cin, cout, h, w, sparsity=sparsity, residual=residual)
    got = sparse_conv2d(x, weight, bias, padding=1, residual=res, relu=relu, variant=Variant("winograd", *tile),
                        threads=threads)
    # the transforms' fp32 rounding scales with the magnitudes a tile sums, not with the result: an output near
    # zero by cancellation keeps an error of a few 1e-6 of the largest such sum (3.4e-6 at worst in 400 cases)
    mass = F.conv2d(x.abs(), weight.abs(), bias.abs(), padding=1).max()
    torch.testing.assert_close(got, expected.relu() if relu else expected, atol=float(2e-5 * mass), rtol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_wide_tile_over_several_channel_groups_and_blocks(threads):
    # 40 channels: two groups of 16 and a part one; a 12 x 16 plane: twelve blocks of one tile, whose next
    # block's lines each block prefetches, across the work units of two threads
    x, weight, bias, res, expected = random_case(7, 16, 20, 40, 12, 16, sparsity=0.5, residual=True)
    got = sparse_conv2d(x, weight, bias, padding=1, residual=res, relu=True, variant=Variant("winograd", 16, 1),
                        threads=threads)
    mass = F.conv2d(x.abs(), weight.abs(), bias.abs(), padding=1).max()
    torch.testing.assert_close(got, expected.relu(), atol=float(2e-5 * mass), rtol=1e-4)


def test_winograd_leaves_the_border_zero_and_refuses_what_it_cannot_run():
    torch.manual_seed(1)
    geom = ConvGeometry.make(Act(8, 8, 8, 16, 1), 8, (3, 3), 1, 1, 1)
    inp, out = to_act(torch.randn(16, 8, 8, 8), geom.inp), geom.out.alloc()
    K.ConvOp(geom, torch.randn(8, 8, 3, 3), torch.randn(8), Variant("winograd", 4, 4), inp, out, None, None, False, 2)()
    assert (out * (1 - geom.out.mask())).abs().sum() == 0  # only image pixels are written
    for bad in (Act(8, 6, 8, 16, 1), Act(8, 8, 8, 1, 1)):  # no whole 4x4 tiles; one picture
        with pytest.raises(K.PruneBenchError, match="winograd kernel takes"):
            K.ConvOp(ConvGeometry.make(bad, 8, (3, 3), 1, 1, 1), torch.randn(8, 8, 3, 3), None,
                     Variant("winograd", 4, 4), bad.alloc(), None, None, None, False, 1)
    with pytest.raises(K.PruneBenchError, match="no winograd kernel of R=3"):
        K.ConvOp(geom, torch.randn(8, 8, 3, 3), None, Variant("winograd", 3, 3), inp, out, None, None, False, 1)


def test_winograd_is_offered_for_sixteen_images_where_a_fifth_of_the_weights_are_left():
    batch = ConvGeometry.make(Act(64, 32, 32, 16, 1), 64, (3, 3), 1, 1, 1)

    def offered(geom, density, regs=32, everything=False):
        return [(v.R, v.V) for v in K.candidate_variants(geom, density, 2, everything, regs) if v.kind == "winograd"]

    assert offered(batch, 0.5) == [(16, 1), (4, 4), (4, 6)] and offered(batch, 0.5, regs=8) == [(2, 2), (1, 4)]
    assert offered(batch, 0.1) == [] and offered(batch, 0.1, everything=True)  # sparse enough to skip zeros
    strided = ConvGeometry.make(Act(64, 32, 32, 16, 1), 64, (3, 3), 2, 1, 1)
    one = ConvGeometry.make(Act(64, 32, 32, 1, 1), 64, (3, 3), 1, 1, 1)
    pointwise = ConvGeometry.make(Act(64, 32, 32, 16, 1), 64, (1, 1), 1, 0, 1)
    odd = ConvGeometry.make(Act(64, 6, 6, 16, 1), 64, (3, 3), 1, 1, 1)
    assert not any(offered(g, 1.0) for g in (strided, one, pointwise, odd))


# the cols kernel: one picture whose output plane is whole vectors (16, 32, 64 positions)
COLS = [Variant("cols", 1, v) for v in K.COLS_V]


@pytest.mark.parametrize("variant", COLS, ids=str)
@pytest.mark.parametrize("h, w, k, stride, padding", [(4, 4, 3, 1, 1), (8, 8, 3, 2, 1), (8, 8, 1, 2, 0),
                                                      (8, 4, 3, 1, 1), (16, 16, 3, 2, 1), (8, 8, 3, 1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
def test_cols_kernel_matches_conv2d(variant, h, w, k, stride, padding, sparsity):
    g = torch.Generator().manual_seed(int(sparsity * 100) + h + 7 * stride + k)
    x = torch.randn(1, 12, h, w, generator=g)
    weight = torch.randn(20, 12, k, k, generator=g) * (torch.rand(20, 12, k, k, generator=g) >= sparsity)
    bias = torch.randn(20, generator=g)
    expected = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    if (expected.shape[2] * expected.shape[3]) % (16 * variant.V):
        with pytest.raises(K.PruneBenchError, match="whole tiles"):
            sparse_conv2d(x, weight, bias, stride=stride, padding=padding, variant=variant)
        return
    res = torch.randn(expected.shape, generator=g)
    got = sparse_conv2d(x, weight, bias, stride=stride, padding=padding, residual=res, relu=True, variant=variant,
                        threads=2)
    torch.testing.assert_close(got, (expected + res).relu(), atol=1e-4, rtol=1e-4)


def test_cols_kernel_by_hand():
    # one centre tap of 2 and one right tap of -1 on a 4x4 ramp: out = 2 * x - (x shifted left, zero at the edge) + 1
    x = torch.arange(16.0).view(1, 1, 4, 4)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1], w[0, 0, 1, 2] = 2.0, -1.0
    right = torch.zeros(1, 1, 4, 4)
    right[..., :3] = x[..., 1:]
    y = sparse_conv2d(x, w, torch.tensor([1.0]), padding=1, variant=Variant("cols", 1, 1))
    assert torch.equal(y, 2 * x - right + 1)


def test_cols_kernel_is_offered_for_small_pictures_only():
    def offered(n, c, hw, stride=1):
        geom = ConvGeometry.make(Act(c, hw, hw, n, 1), c, (3, 3), stride, 1, 1)
        return [v for v in K.candidate_variants(geom, 0.05, threads=2) if v.kind == "cols"]

    assert offered(1, 512, 4) == [Variant("cols", 1, 1)]  # 512 x 9 taps x 16 positions: 295 KB, fits in L2
    assert offered(1, 256, 8, stride=2) == [Variant("cols", 1, 1)]  # output 4x4
    assert offered(1, 256, 8) == []  # 590 KB of gathered taps: slower than the layout
    assert offered(16, 512, 4) == []  # the 16-image layout has no border lanes to save
    assert offered(1, 64, 6) == []  # 36 positions: not whole vectors
    with pytest.raises(K.PruneBenchError, match="cols kernel"):
        sparse_conv2d(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 3, 3), padding=1, variant=Variant("cols", 1, 1))


# the stack kernel: stride-1 3-high convolutions of one picture whose rows are whole vectors
STACK = [Variant("stack", r, v) for r, v in K.STACK_TILES] + [Variant("stack", 4, 1, chunk=5, tiles=True),
                                                            Variant("stack", 2, 2, chunk=3)]


@pytest.mark.parametrize("variant", STACK, ids=str)
@pytest.mark.parametrize("h, w", [(32, 32), (16, 16), (7, 16), (5, 32), (1, 16)])  # 7, 5, 1: a last, shorter band
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
def test_stack_kernel_matches_conv2d(variant, h, w, sparsity):
    g = torch.Generator().manual_seed(int(sparsity * 100) + h + w)
    x = torch.randn(1, 12, h, w, generator=g)
    weight = torch.randn(20, 12, 3, 3, generator=g) * (torch.rand(20, 12, 3, 3, generator=g) >= sparsity)
    bias = torch.randn(20, generator=g)
    expected = F.conv2d(x, weight, bias, padding=1)
    if (w // 16) % variant.V:
        with pytest.raises(K.PruneBenchError, match="no stack kernel"):
            sparse_conv2d(x, weight, bias, padding=1, variant=variant)
        return
    res = torch.randn(expected.shape, generator=g)
    got = sparse_conv2d(x, weight, bias, padding=1, residual=res, relu=True, variant=variant, threads=2)
    torch.testing.assert_close(got, (expected + res).relu(), atol=1e-4, rtol=1e-4)
    # without the epilogue, and the border the next layer reads stays zero
    inp = Act(12, h, w, 1, 1)
    geom = ConvGeometry.make(inp, 20, (3, 3), 1, 1, out_border=1)
    out = geom.out.alloc()
    K.ConvOp(geom, weight, bias, variant, to_act(x, inp), out, None, None, False, 1)()
    torch.testing.assert_close(from_act(out, geom.out), expected, atol=1e-4, rtol=1e-4)
    assert out[:, geom.out.mask() == 0].abs().sum() == 0


def test_stack_kernel_by_hand():
    # a kernel column's top tap of 1 and bottom tap of -2 (one {0, 2} entry), a 3 x 16 ramp:
    # out[y, x] = x[y - 1, x] - 2 x[y + 1, x] + 0.5, zero beyond the top and bottom rows
    x = torch.arange(48.0).view(1, 1, 3, 16)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 0, 1], w[0, 0, 2, 1] = 1.0, -2.0
    up, down = torch.zeros_like(x), torch.zeros_like(x)
    up[..., 1:, :], down[..., :2, :] = x[..., :2, :], x[..., 1:, :]
    for variant in (Variant("stack", 2, 1), Variant("stack", 4, 1), Variant("stack", 3, 1, tiles=True)):
        y = sparse_conv2d(x, w, torch.tensor([0.5]), padding=1, variant=variant)
        assert torch.equal(y, up - 2 * down + 0.5), str(variant)


def test_stack_kernel_is_offered_for_one_picture_of_whole_vector_rows():
    def offered(n, c, hw, stride=1, kernel=(3, 3)):
        geom = ConvGeometry.make(Act(c, hw, hw, n, 1), c, kernel, stride, kernel[0] // 2, 1)
        return [v for v in K.candidate_variants(geom, 0.5, threads=2) if v.kind == "stack"]

    assert {(v.R, v.V) for v in offered(1, 64, 32)} == set(K.stack_tiles(
        ConvGeometry.make(Act(64, 32, 32, 1, 1), 64, (3, 3), 1, 1, 1)))
    assert {v.chunk for v in offered(1, 64, 32)} == {0, 16, 32}  # chunks smaller than the 64 input channels
    assert all(v.V == 1 for v in offered(1, 128, 16))  # a 16-wide row is one vector
    assert offered(1, 256, 8) == [] and offered(1, 512, 4) == []  # rows of half a vector: cols or the layout's
    assert offered(16, 64, 32) == []  # 16 images: the rows kernel shares the loads of a kernel row instead
    assert offered(1, 64, 32, stride=2) == [] and offered(1, 64, 32, kernel=(1, 1)) == []
    with pytest.raises(K.PruneBenchError, match="stack kernel"):
        sparse_conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), padding=1, variant=Variant("stack", 4, 1))


def test_padding_larger_than_border_is_refused():
    with pytest.raises(K.PruneBenchError, match="border"):
        ConvGeometry.make(Act(3, 8, 8, 1, 1), 4, (5, 5), 1, 2, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 6),
    cout=st.integers(1, 9),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    variant=st.sampled_from(VARIANTS),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_conv2d_on_random_shapes(n, cin, cout, h, w, k, stride, padding, sparsity, variant, relu, seed):
    if h + 2 * padding < k or w + 2 * padding < k:
        return  # no output position: conv2d refuses these too
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, k, k, generator=g)
    weight = weight * (torch.rand(cout, cin, k, k, generator=g) >= sparsity)
    bias = torch.randn(cout, generator=g)
    expected = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    if relu:
        expected = expected.relu()
    got = sparse_conv2d(x, weight, bias, stride=stride, padding=padding, relu=relu, variant=variant)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n, c, hw", [(1, 64, 32), (1, 512, 4), (16, 64, 32), (16, 512, 4), (3, 5, 2)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_candidates_are_all_compiled(n, c, hw, density):
    geom = ConvGeometry.make(Act(c, hw, hw, n, 1), c, (3, 3), 1, 1, 1)
    variants = K.candidate_variants(geom, density, threads=2, everything=True)
    assert variants and all(not K.KINDS[v.kind].compiled or (v.R, v.V) in K.KINDS[v.kind].compiled for v in variants)
    assert {t for k in ("sparse", "grouped", "dense") for t in K.KINDS[k].compiled} == set(KERNELS)
    assert any(v.kind in ("dense", "torch") for v in variants)


@pytest.mark.parametrize("variant", [Variant("sparse", 1, 4), Variant("sparse", 1, 16, block=64, chunk=3),
                                     Variant("dense", 8, 3, chunk=4), Variant("grouped", 4, 2, block=200),
                                     Variant("sparse", 1, 4, block=100, chunk=2, tiles=True), *ROWS,
                                     Variant("panel", 4, 6, block=200, chunk=3, tiles=True), Variant("panel", 2, 3)],
                         ids=str)
@pytest.mark.parametrize("stride", [1, 2])
def test_sixteen_images_skip_the_wrap_around(variant, stride):
    if variant.kind == "rows" and stride != 1:
        with pytest.raises(K.PruneBenchError, match="rows kernel"):
            sparse_conv2d(torch.randn(16, 7, 6, 5), torch.randn(9, 7, 3, 3), stride=stride, padding=1, variant=variant)
        return
    # 16 images innermost: each image row is whole vectors, so the kernel computes only the image part of rows
    torch.manual_seed(3)
    x = torch.randn(16, 7, 6, 5)
    w = torch.randn(9, 7, 3, 3) * (torch.rand(9, 7, 3, 3) > 0.5)
    b = torch.randn(9)
    res = torch.randn_like(F.conv2d(x, w, b, stride=stride, padding=1))
    y = sparse_conv2d(x, w, b, stride=stride, padding=1, residual=res, relu=True, variant=variant, threads=2)
    torch.testing.assert_close(y, (F.conv2d(x, w, b, stride=stride, padding=1) + res).relu(), atol=1e-5, rtol=1e-5)


def test_calls_from_several_threads_at_once():
    # the backend runs one engine per thread; kernels called concurrently must not mix their work
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(5)
    cases = []
    for i in range(6):
        x = torch.randn(2, 8, 6, 6)
        w = torch.randn(8, 8, 3, 3) * (torch.rand(8, 8, 3, 3) > 0.5)
        cases.append((x, w, F.conv2d(x, w, padding=1)))

    def one(case, threads):
        x, w, expected = case
        return (sparse_conv2d(x, w, padding=1, threads=threads) - expected).abs().max().item()

    with ThreadPoolExecutor(max_workers=3) as pool:
        errors = list(pool.map(lambda ic: one(ic[1], 1 + ic[0] % 2), enumerate(cases * 5)))
    assert max(errors) < 1e-4


@settings(max_examples=30, deadline=None)
@given(n=st.sampled_from([1, 2, 3, 16, 17]), c=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 35),
       border=st.integers(1, 2), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_global_avg_pool_reads_only_the_pixels(n, c, h, w, border, threads, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    act = Act(c, h, w, n, border)
    buf = to_act(x, act)
    pixels = from_act(buf, act).clone()
    buf.add_(torch.rand(buf.shape, generator=g) + 1.0)  # junk on border and wrap-around: must not be read...
    act.interior(buf).copy_(pixels)  # ...while the pixels are the image's
    out = torch.full((n, c, 1, 1), float("nan"))
    K.global_avg_pool(buf, act, out, threads)
    torch.testing.assert_close(out, x.mean((2, 3), keepdim=True), atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 17), c=st.integers(1, 70), k=st.integers(1, 12), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_matches_torch(n, c, k, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x, weight = torch.randn(n, c, generator=g), torch.randn(k, c, generator=g)
    b = torch.randn(k, generator=g) if bias else None
    out = torch.full((n, k), float("nan"))
    K.linear(x, weight, b, out)
    torch.testing.assert_close(out, F.linear(x, weight, b), atol=1e-4, rtol=1e-4)


def test_linear_refuses_shapes_that_do_not_fit():
    with pytest.raises(K.PruneBenchError, match="do not fit"):
        K.linear(torch.randn(2, 8), torch.randn(3, 7), None, torch.zeros(2, 3))


@settings(max_examples=30, deadline=None)
@given(n=st.sampled_from([1, 2, 16]), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       border=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_layout_copy_matches_the_strided_view(n, c, h, w, border, seed):
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    act = Act(c, h, w, n, border)
    fast = to_act(x, act)  # contiguous fp32: the kernel's copy
    slow = act.alloc()
    act.interior(slow).copy_(x)  # torch's strided copy
    assert torch.equal(fast, slow)
    assert torch.equal(to_act(x.transpose(2, 3).contiguous().transpose(2, 3), act), slow)  # non-contiguous input


def test_register_budget_of_the_tiles():
    # AVX-512 (32 vectors): every compiled tile fits; AVX2 (8): only small ones, as the C++'s kVRegs says
    assert all(K.fits_registers("dense", r, v, 32) for r, v in KERNELS)
    assert all(K.fits_registers("rows", 1, v, 32) for v in ROWS_V if v <= 12)
    fits8 = {(r, v) for r, v in KERNELS if K.fits_registers("dense", r, v, 8)}
    assert {(1, 1), (1, 6), (2, 2), (3, 2), (4, 1), (6, 1)} <= fits8
    assert not fits8 & {(1, 8), (4, 2), (8, 1), (4, 6), (12, 2)}
    assert [v for v in ROWS_V if K.fits_registers("rows", 1, v, 8)] == [2, 4]  # 2V + 3 + 2 of 16 ymm
    # the stack kernel: R x V accumulators, one input, a column's 3 weights (2 vectors' worth on AVX2)
    assert {t for t in K.STACK_TILES if K.fits_registers("stack", *t, 8)} == {(2, 1), (3, 1), (4, 1), (5, 1), (2, 2)}
    assert all(K.fits_registers("stack", *t, 32) for t in K.STACK_TILES)
    # the panel kernel: R x V accumulators, one input, a pattern's R weights (two per ymm pair on AVX2)
    assert {t for t in PANEL_TILES if K.fits_registers("panel", *t, 8)} == {(2, 2), (2, 3), (4, 1)}
    assert all(K.fits_registers("panel", *t, 32) for t in PANEL_TILES)
    # the Winograd product: R x V accumulators, R broadcast weights, one input (V = 1: weights broadcast from memory)
    assert {t for t in WINO_TILES if K.fits_registers("winograd", *t, 8)} == {(2, 2), (1, 4)}
    assert all(K.fits_registers("winograd", *t, 32) for t in WINO_TILES)
    assert K.vector_registers() in (8, 32)


@pytest.mark.parametrize("regs", [8, 32])
@pytest.mark.parametrize("n, hw", [(1, 32), (1, 4), (16, 32), (16, 8)])
@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
def test_only_tiles_that_fit_are_offered(regs, n, hw, density):
    geom = ConvGeometry.make(Act(64, hw, hw, n, 1), 64, (3, 3), 1, 1, 1)
    variants = K.candidate_variants(geom, density, threads=2, everything=True, regs=regs)
    assert any(v.kind in ("dense", "torch") for v in variants)
    for v in variants:
        if v.kind in ("sparse", "grouped", "dense", "rows", "stack", "panel", "winograd"):
            assert v.V == 1 or K.fits_registers(v.kind, v.R, v.V, regs), str(v)


def test_the_tiles_offered_follow_the_build():
    # the registers come from the module built, not from the CPU: an AVX2 build on an AVX-512 CPU has 8
    assert K.vector_registers() == {"avx512": 32, "avx2": 8}.get(build.built_isa(), 8)
    assert build.built_isa() == build.widest(build.selected_isa())
    geom = ConvGeometry.make(Act(64, 32, 32, 1, 1), 64, (3, 3), 1, 1, 1)
    assert K.candidate_variants(geom, 0.5, threads=2) == K.candidate_variants(geom, 0.5, threads=2,
                                                                           regs=K.vector_registers())


def test_each_instruction_set_is_a_build_of_its_own(monkeypatch):
    assert build.flags("native") != build.flags("avx2") != build.flags("avx512")
    assert "-march=native" in build.flags("native") and "-mavx512f" not in build.flags("avx2")
    assert len({build.build_name(i) for i in build.ISAS}) == 3  # the cache names differ
    assert {"native"} <= set(build.cpu_isas()) <= set(build.ISAS)
    monkeypatch.setattr(build, "_override", None)  # outside the fixture's build: the environment decides
    monkeypatch.setenv(build.ISA_ENV, "avx2")
    if "avx2" in build.cpu_isas():
        with build.using(None):
            assert build.selected_isa() == "avx2"
        with build.using("native"):  # inside ``using`` the block's choice wins over the environment
            assert build.selected_isa() == "native"


@pytest.mark.parametrize("value, message", [("sse9", "unknown instruction set; give one of native, avx2, avx512"),
                                            ("avx512", "this CPU cannot run avx512 code; it can run native, avx2")])
def test_an_instruction_set_this_cpu_lacks_is_a_one_line_error(monkeypatch, value, message):
    monkeypatch.setattr(build, "cpu_flags", lambda: frozenset({"sse2", "avx", "avx2", "fma"}))  # an AVX2-only CPU
    monkeypatch.setattr(build, "_override", None)
    monkeypatch.setattr(build, "_loaded", {})  # nothing loaded yet: the selection is checked
    monkeypatch.setenv(build.ISA_ENV, value)
    for call in (build.selected_isa, K.kernel_module, K.unavailable):
        with pytest.raises(K.PruneBenchError, match=message) as e:
            call()
        assert "\n" not in str(e.value) and str(e.value).startswith(f"PRUNEBENCH_ISA={value}: ")
    assert build.widest("native") == "avx2"
