"""Exporters: ONNX parity and surviving zeros, the compact sparse format's exact round trip, one-line errors."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from exporters import onnx as onnx_export
from exporters import sparse as sparse_export
from prune.checkpoint import load_checkpoint, save_checkpoint
from prune.errors import PruneBenchError
from prune.models import resnet18_cifar


def zero_out_(model: nn.Module, sparsity: float, seed: int = 0) -> int:
    """Zero a random ``sparsity`` share of every conv/linear weight (a cheap stand-in for pruning); returns the zeros."""
    g = torch.Generator().manual_seed(seed)
    zeros = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                drop = torch.rand(m.weight.shape, generator=g) < sparsity
                m.weight[drop] = 0
                zeros += int((m.weight == 0).sum())
    return zeros


class Tiny(nn.Module):
    """Conv-BN-ReLU, a strided conv with bias, pooling and fc: the shapes ResNet-18 uses, in miniature."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def tiny(sparsity: float = 0.6) -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them into the convs matters
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    zero_out_(model, sparsity)
    return model.eval()


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    """A CIFAR ResNet-18 checkpoint with 80% of its conv/fc weights zero."""
    model = resnet18_cifar()
    zero_out_(model, 0.8)
    path = tmp_path_factory.mktemp("ckpt") / "r18.pt"
    save_checkpoint(path, model, {"target_sparsity": 0.8})
    return path


# -- ONNX ---------------------------------------------------------------


def test_onnx_export_matches_pytorch_and_keeps_zeros(tmp_path):
    model = tiny()
    out = tmp_path / "tiny.onnx"
    report = onnx_export.export_model(model, out, input_shape=(3, 8, 8))
    model_zeros, _ = onnx_export.weight_zero_counts(model)
    assert model_zeros > 0
    assert report.zero_weights == model_zeros == report.model_zero_weights
    assert report.max_abs_diff <= 1e-4
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert onnx_export.onnx_weight_zero_counts(proto)[0] == model_zeros
    # The batch axis is dynamic: a batch size the export never saw runs and matches.
    x = torch.randn(5, 3, 8, 8)
    got = onnx_export.session_for(out).run(None, {onnx_export.INPUT_NAME: x.numpy()})[0]
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=1e-3)


def test_onnx_fixed_batch_rejects_other_sizes(tmp_path):
    out = tmp_path / "fixed.onnx"
    report = onnx_export.export_model(
        tiny(), out, onnx_export.OnnxSettings(batch_size=2), input_shape=(3, 8, 8)
    )
    assert report.batch_size == 2 and report.parity_batch == 2
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 2


def test_zero_count_sees_lost_zeros(tmp_path):
    """The counter notices a weight whose zeros were filled in, so the export check can fail."""
    from onnx import numpy_helper

    model = tiny()
    out = tmp_path / "tiny.onnx"
    onnx_export.export_model(model, out, input_shape=(3, 8, 8))
    proto = onnx.load(str(out))
    zeros = onnx_export.weight_zero_counts(model)[0]
    assert onnx_export.onnx_weight_zero_counts(proto)[0] == zeros
    conv_weight = next(n.input[1] for n in proto.graph.node if n.op_type == "Conv")
    init = next(i for i in proto.graph.initializer if i.name == conv_weight)
    array = numpy_helper.to_array(init).copy()
    filled = int((array == 0).sum())
    assert filled > 0
    array[array == 0] = 1.0
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    assert onnx_export.onnx_weight_zero_counts(proto)[0] == zeros - filled


def test_onnx_cli_on_a_resnet_checkpoint(resnet_checkpoint, tmp_path, capsys):
    out = tmp_path / "r18.onnx"
    assert onnx_export.main([str(resnet_checkpoint), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    model, _ = load_checkpoint(resnet_checkpoint)
    zeros, _ = onnx_export.weight_zero_counts(model)
    assert f"zero weights in initializers: {zeros} of" in text and f"model: {zeros}" in text
    assert "gzip" in text and out.exists()
    # Nothing is overwritten without --force.
    assert onnx_export.main([str(resnet_checkpoint), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    ["not_a_checkpoint", "wrong_architecture", "unwritable_folder", "low_opset", "missing"],
)
def test_onnx_cli_errors_are_one_line(case, tmp_path, resnet_checkpoint, capsys):
    args = [str(resnet_checkpoint), "-o", str(tmp_path / "x.onnx")]
    if case == "not_a_checkpoint":
        bad = tmp_path / "notes.pt"
        bad.write_text("hello")
        args[0] = str(bad)
    elif case == "wrong_architecture":
        bad = tmp_path / "tiny.pt"
        torch.save(tiny().state_dict(), bad)
        args[0] = str(bad)
    elif case == "unwritable_folder":
        blocker = tmp_path / "file"
        blocker.write_text("")
        args[2] = str(blocker / "x.onnx")  # its folder is a file
    elif case == "low_opset":
        args += ["--opset", "13"]
    elif case == "missing":
        args[0] = str(tmp_path / "nope.pt")
    assert onnx_export.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


# -- compact sparse -----------------------------------------------------


def test_sparse_encode_decode_is_exact():
    g = torch.Generator().manual_seed(1)
    state = {
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g) * (torch.rand(8, 4, 3, 3, generator=g) < 0.3),
        "fc.weight": torch.randn(10, 7, generator=g),  # no zeros: stays dense
        "empty.weight": torch.zeros(3, 5),
        "bn.running_var": torch.rand(8, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    data = sparse_export.encode(state)
    assert set(data["sparse"]) == {"conv.weight", "empty.weight"}
    back = sparse_export.decode(data)
    assert list(back) == list(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k]), k


def test_sparse_checkpoint_round_trip(resnet_checkpoint, tmp_path, capsys):
    out = tmp_path / "r18.sparse.pt"
    assert sparse_export.main([str(resnet_checkpoint), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "round trip exact" in text and "gzip" in text
    model, _ = load_checkpoint(resnet_checkpoint)
    loaded, meta = sparse_export.load_model(out)
    assert meta["target_sparsity"] == 0.8
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    # 20% of the weights left: bitmask (1/32 of dense) plus a fifth of the values.
    assert out.stat().st_size < 0.3 * resnet_checkpoint.stat().st_size
    again = torch.load(out, weights_only=True)  # the format needs no pickled code
    assert again["format"] == sparse_export.FORMAT


def test_sparse_size_shrinks_with_nonzeros():
    import io

    sizes = []
    for sparsity in (0.0, 0.5, 0.9, 0.99):
        w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
        w[torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < sparsity] = 0
        buffer = io.BytesIO()
        torch.save(sparse_export.encode({"w": w}), buffer)
        sizes.append(len(buffer.getvalue()))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 0.1 * sizes[0]


def test_sparse_load_model_takes_dense_checkpoints(resnet_checkpoint):
    a, _ = sparse_export.load_model(resnet_checkpoint)
    b, _ = load_checkpoint(resnet_checkpoint)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("case", ["not_a_checkpoint", "exists", "same_file", "load_dense_as_sparse"])
def test_sparse_errors(case, tmp_path, resnet_checkpoint, capsys):
    if case == "load_dense_as_sparse":
        with pytest.raises(PruneBenchError, match="not a prunebench-sparse"):
            sparse_export.load_sparse(resnet_checkpoint)
        return
    args = [str(resnet_checkpoint), "-o", str(tmp_path / "out.pt")]
    if case == "not_a_checkpoint":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"\x00\x01 not a zip")
        args[0] = str(bad)
    elif case == "exists":
        (tmp_path / "out.pt").write_text("keep me")
    elif case == "same_file":
        args[2] = str(resnet_checkpoint)
    assert sparse_export.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    if case == "exists":
        assert (tmp_path / "out.pt").read_text() == "keep me"


def test_onnx_export_refuses_attached_masks(tmp_path):
    from torch.nn.utils import prune as torch_prune

    model = tiny()
    torch_prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    with pytest.raises(PruneBenchError, match="masks attached"):
        onnx_export.export_model(model, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    assert not (tmp_path / "m.onnx").exists()
