"""Data sets and batches: synthetic, CIFAR-10 errors, Fashion-MNIST (Debian's files), foolbox's CIFAR-10 PNGs."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import tiny_net
from prune.data import (
    DATASETS,
    DataSettings,
    ResidentBatches,
    Split,
    augment,
    batches,
    cifar10_samples,
    find_fashion_mnist,
    load_data,
    normalize,
    read_idx,
)
from prune.errors import PruneBenchError
from prune.train import TrainSettings, evaluate, fit

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: faster on shared 2-core machines


def test_synthetic_is_deterministic_balanced_and_limited():
    a = load_data(DataSettings("synthetic"))
    b = load_data(DataSettings("synthetic"))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (2048, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert Counter(a.train.labels.tolist()) == {c: 2048 // 10 + (c < 2048 % 10) for c in range(10)}
    small = load_data(DataSettings("synthetic", train_limit=64, test_limit=8))
    assert (len(small.train), len(small.test)) == (64, 8)
    assert torch.equal(small.train.images, a.train.images[:64])
    assert not torch.equal(a.train.images[:64], a.test.images[:64])  # test images are new draws


def test_synthetic_is_learnable_in_a_few_steps(synthetic, one_thread):
    model = tiny_net()
    chance_acc, _ = evaluate(model, synthetic)
    fit(model, synthetic, TrainSettings(epochs=3, batch_size=32, lr=0.1, workers=0, progress=False, device="cpu"))
    accuracy, _ = evaluate(model, synthetic)
    assert accuracy > 0.5 > chance_acc + 0.2


def crops_of(image: torch.Tensor) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
    return crops + [c.flip(2) for c in crops]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_is_a_padded_crop_maybe_flipped(dtype):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(16, 3, 32, 32, generator=g) * 255).to(dtype)
    out = augment(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == dtype
    for img, aug in zip(images, out):
        assert any(torch.equal(aug, c) for c in crops_of(img))
    assert not torch.equal(out, images)  # 16 images all left unshifted and unflipped: 1 in 162^16
    single = augment(images[:1].expand(64, -1, -1, -1), torch.Generator().manual_seed(2))
    assert len({tuple(x.flatten()[:200].tolist()) for x in single}) > 10  # offsets vary per image


def test_normalize_standardises_and_repeats_grey_to_three_channels():
    grey = torch.full((2, 1, 32, 32), 51, dtype=torch.uint8)
    out = normalize(grey, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.2, 0.0, -0.2]))


@pytest.mark.parametrize("kind", ["dataloader", "resident"])
def test_a_training_pass_visits_every_image_once(synthetic, kind):
    split = synthetic.train.head(100)
    loader = (
        batches(split, synthetic, 32, True, "cpu", workers=0, seed=0)
        if kind == "dataloader"
        else ResidentBatches(split, synthetic, 32, True, "cpu", seed=0)
    )
    assert len(loader) == 4
    for _ in range(2):  # reusable across epochs
        labels = torch.cat([y for _, y in loader])
        assert sorted(labels.tolist()) == sorted(split.labels.tolist())
    first = [y for _, y in loader][0]
    again = [y for _, y in loader][0]
    assert not torch.equal(first, again)  # shuffled afresh each pass


def test_evaluation_batches_are_in_order_and_unaugmented(synthetic):
    xs, ys = zip(*batches(synthetic.test, synthetic, 50, False, "cpu"))
    assert torch.equal(torch.cat(ys), synthetic.test.labels)
    torch.testing.assert_close(torch.cat(xs), normalize(synthetic.test.images, synthetic.mean, synthetic.std))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the resident GPU path cannot run")
def test_resident_gpu_batches_augment_on_the_gpu(synthetic):
    loader = batches(synthetic.train, synthetic, 64, True, "cuda", seed=0)
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.shape == (64, 3, 32, 32)


def test_unknown_data_set_lists_the_known_ones():
    with pytest.raises(PruneBenchError) as e:
        load_data(DataSettings("imagenet"))
    assert all(name in str(e.value) for name in DATASETS)


def test_missing_cifar10_names_the_layout_and_the_download_flag(tmp_path):
    with pytest.raises(PruneBenchError) as e:
        load_data(DataSettings("cifar10", data_root=str(tmp_path)))
    message = str(e.value)
    assert "cifar-10-batches-py/" in message and "--download" in message and "\n" not in message


def test_a_broken_cifar10_folder_gets_one_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(PruneBenchError) as e:
        load_data(DataSettings("cifar10", data_root=str(tmp_path)))
    assert "cannot read CIFAR-10" in str(e.value) and "\n" not in str(e.value)


def write_idx(path, array: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_data_root_in_the_idx_format(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(1, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    data = load_data(DataSettings("fashion-mnist", data_root=str(tmp_path)))
    assert data.train.images.shape == (30, 1, 32, 32) and len(data.test) == 10
    assert (data.train.images[:, :, :2] == 0).all() and (data.train.images[:, :, 2:30, 2:30] > 0).all()
    assert "not CIFAR-10" in data.note
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x0a\x01"))
    with pytest.raises(PruneBenchError, match="truncated"):
        load_data(DataSettings("fashion-mnist", data_root=str(tmp_path)))


def test_read_idx_refuses_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(PruneBenchError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    with pytest.raises(PruneBenchError, match="no Fashion-MNIST"):
        find_fashion_mnist(str(tmp_path))


def _debian_fashion_mnist() -> str | None:
    try:
        return str(find_fashion_mnist())
    except PruneBenchError:
        return None


@pytest.mark.skipif(
    _debian_fashion_mnist() is None,
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_debians_package():
    data = load_data(DataSettings("fashion-mnist"))
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert data.train.images.shape[1:] == (1, 32, 32)
    assert Counter(data.train.labels.tolist()) == {c: 6000 for c in range(10)}
    assert Counter(data.test.labels.tolist()) == {c: 1000 for c in range(10)}
    assert data.train.images[:, :, :2].max() == 0  # the 28x28 images sit inside a 2-pixel zero border
    x = normalize(data.train.images[:2000], data.mean, data.std)
    assert x.shape == (2000, 3, 32, 32)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    assert "stand-in for CIFAR-10" in data.note


@pytest.mark.skipif(
    importlib.util.find_spec("foolbox") is None,
    reason="foolbox is not installed (pip install --no-deps foolbox==3.3.4; make install does it)",
)
def test_the_twenty_real_cifar10_test_images_from_foolbox():
    data = cifar10_samples()
    assert data.test.images.shape == (20, 3, 32, 32) and data.test.images.dtype == torch.uint8
    # the first ten labels of the CIFAR-10 test set: cat ship ship airplane frog frog automobile frog cat automobile
    assert data.test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert data.test.images.float().std() > 30  # real photographs, not blanks
    with pytest.raises(PruneBenchError, match="evaluation only"):
        data.require_train()
    accuracy, loss = evaluate(tiny_net().eval(), data)
    assert 0.0 <= accuracy <= 1.0 and loss > 0


def test_split_validates_its_tensors():
    with pytest.raises(PruneBenchError):
        Split(torch.zeros(2, 3, 32, 32), torch.zeros(2))
    with pytest.raises(PruneBenchError):
        Split(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3))
