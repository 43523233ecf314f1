"""Data sets as uint8 tensors, and batches of them on the CPU or resident on the GPU.

Every data set is presented as 3x32x32 images so the one CIFAR ResNet-18 runs on
all of them. Images stay uint8 (N x C x 32 x 32, C = 1 or 3) until a batch is
made; normalisation and augmentation (random crop with 4-pixel zero padding,
horizontal flip: He et al. 2016, "Deep Residual Learning for Image
Recognition", section 4.2) happen per batch, on whichever device holds the data.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import math
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from prune.errors import PruneBenchError

PAD = 4  # pixels of zero padding for the random crop
SIZE = 32  # height and width the network sees

# Where Debian's dataset-fashion-mnist puts the files (and a spelling seen elsewhere).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/dataset-fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass
class DataSettings:
    """Which data set to use and where it lives."""

    dataset: str = "cifar10"  # cifar10 | fashion-mnist | synthetic | cifar10-samples (evaluation only)
    data_root: str = ""  # folder holding the data set (default: ./data for cifar10, Debian's folder for fashion-mnist)
    download: bool = False  # download CIFAR-10 into --data-root where it is missing (needs the internet)
    train_limit: int = 0  # use only the first N training images (0: all)
    test_limit: int = 0  # use only the first N test images (0: all)

    def check(self) -> None:
        """Raise a one-line error for settings no data set can satisfy (without reading any data)."""
        get_dataset(self.dataset)
        if self.train_limit < 0 or self.test_limit < 0:
            raise PruneBenchError("--train-limit and --test-limit must be >= 0 (0 means all images)")


@dataclasses.dataclass
class Split:
    """One split of a data set: uint8 images N x C x 32 x 32 (C = 1 or 3) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise PruneBenchError(f"images must be uint8 N x (1|3) x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise PruneBenchError(f"{self.images.shape[0]} images but {tuple(self.labels.shape)} labels")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int) -> "Split":
        """The first ``n`` images (all where ``n`` is 0)."""
        return self if n <= 0 or n >= len(self) else Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclasses.dataclass
class DataSet:
    """A loaded data set with its normalisation and the note every result made with it carries."""

    name: str
    train: Split | None  # None for evaluation-only sets
    test: Split
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str  # e.g. that Fashion-MNIST stands in for CIFAR-10
    source: str  # where the images came from
    num_classes: int = 10

    def require_train(self) -> Split:
        if self.train is None:
            raise PruneBenchError(f"data set {self.name!r} has no training split: it is for evaluation only")
        return self.train


# -- per-batch transforms (any device) ---------------------------------------------


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x C x H x W -> float N x 3 x H x W, scaled to [0, 1] then standardised per channel.

    ``mean`` and ``std`` are 3 floats or tensors already on the images' device
    (which saves a host-to-device copy per batch on the GPU).
    """
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip, per image.

    Works on uint8 or float batches on any device; ``generator`` must live on that device.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dev = images.device
    dy = torch.randint(0, 2 * PAD + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # n x h x 1
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # n x 1 x w
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # n x h x w x c
    out = out.permute(0, 3, 1, 2)
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out).contiguous()


# -- batches -------------------------------------------------------------------------


class ResidentBatches:
    """Batches of a split held whole on one device (the GPU path: no host copies, no workers).

    Each pass shuffles (when ``train``) with its own generator, augments on the
    device and normalises. ``len()`` is the number of batches per pass.
    """

    def __init__(self, split: Split, data: DataSet, batch_size: int, train: bool, device, seed: int = 0):
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.mean = torch.tensor(data.mean, device=self.device)
        self.std = torch.tensor(data.std, device=self.device)
        self.batch_size = batch_size
        self.train = train
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, device=self.device, generator=self.generator) if self.train else None
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            images, labels = self.split.images[idx], self.split.labels[idx]
            if self.train:
                images = augment(images, self.generator)
            yield normalize(images, self.mean, self.std), labels


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.images[i], self.split.labels[i]


class _AugmentCollate:
    """Stack, augment and normalise a batch inside a DataLoader worker (picklable for spawn)."""

    def __init__(self, mean, std, train: bool):
        self.mean, self.std, self.train = mean, std, train

    def __call__(self, items):
        images = torch.stack([i for i, _ in items])
        labels = torch.stack([label for _, label in items])
        if self.train:
            images = augment(images)
        return normalize(images, self.mean, self.std), labels


def batches(split: Split, data: DataSet, batch_size: int, train: bool, device, workers: int = 0, seed: int = 0):
    """An iterable of normalised ``(images, labels)`` batches, reusable across epochs.

    On CUDA the split is kept resident on the GPU and augmented there
    (``ResidentBatches``); on the CPU a DataLoader with ``workers`` processes
    augments batches (evaluation batches need no workers).
    """
    if batch_size < 1:
        raise PruneBenchError(f"batch size {batch_size} must be >= 1")
    device = torch.device(device)
    if device.type == "cuda" or not train:
        return ResidentBatches(split, data, batch_size, train, device, seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        _Indexed(split),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=_AugmentCollate(data.mean, data.std, train),
        generator=generator,
        persistent_workers=workers > 0,
    )


# -- the data sets -----------------------------------------------------------------------


def synthetic(settings: DataSettings, train_size: int = 2048, test_size: int = 512) -> DataSet:
    """Deterministic class-dependent patterns plus noise: learnable in a few steps, no files.

    Each class is a smooth random colour pattern (a 4x4 grid upsampled to 32x32,
    so it survives the crop and flip); each image is its class pattern plus
    independent noise. Always generated from seed 0, whatever the run's seed.
    """
    g = torch.Generator().manual_seed(0)
    templates = F.interpolate(torch.rand(10, 3, 4, 4, generator=g), size=(SIZE, SIZE), mode="bilinear")

    def make(n: int) -> Split:
        labels = torch.arange(n) % 10
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.rand(n, 3, SIZE, SIZE, generator=g)
        images = (0.6 * templates[labels] + 0.4 * noise).mul(255).round().to(torch.uint8)
        return Split(images, labels)

    train, test = make(train_size), make(test_size)
    return DataSet(
        "synthetic",
        train.head(settings.train_limit),
        test.head(settings.test_limit),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        note="synthetic patterns (for tests only; says nothing about CIFAR-10)",
        source="generated",
    )


def cifar10(settings: DataSettings) -> DataSet:
    """CIFAR-10 via torchvision from ``DATA_ROOT/cifar-10-batches-py/`` (``--download`` fetches it)."""
    from torchvision.datasets import CIFAR10

    root = Path(settings.data_root or "data")
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir() and not settings.download:
        raise PruneBenchError(
            f"no CIFAR-10 at {folder}/: expected DATA_ROOT/cifar-10-batches-py/ (data_batch_1..5, test_batch); "
            "pass --data-root to point at it or --download to fetch it"
        )
    try:
        splits = [CIFAR10(str(root), train=t, download=settings.download) for t in (True, False)]
    except (RuntimeError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PruneBenchError(
            f"cannot read CIFAR-10 from {folder}/ ({first[:100]}): remove it and pass --download, or fix --data-root"
        ) from None

    def to_split(ds) -> Split:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.tensor(ds.targets))

    train, test = (to_split(s) for s in splits)
    return DataSet(
        "cifar10",
        train.head(settings.train_limit),
        test.head(settings.test_limit),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        note="CIFAR-10",
        source=str(folder),
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format, gzip or plain) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise PruneBenchError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise PruneBenchError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise PruneBenchError(f"{path} is truncated: {data.size} bytes for shape {dims}")
    return data.reshape(dims)


def find_fashion_mnist(data_root: str = "") -> Path:
    """The folder holding the four Fashion-MNIST IDX files (``.gz`` or not)."""
    if data_root:
        root = Path(data_root)
        candidates = [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    else:
        candidates = [Path(d) for d in FASHION_MNIST_DIRS]
    for folder in candidates:
        if all(_idx_file(folder, stem) is not None for stem in FASHION_MNIST_FILES.values()):
            return folder
    where = data_root or " or ".join(FASHION_MNIST_DIRS)
    raise PruneBenchError(
        f"no Fashion-MNIST in {where}: expected train-images-idx3-ubyte[.gz] and the other three IDX files; "
        "install Debian's dataset-fashion-mnist or pass --data-root"
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist(settings: DataSettings) -> DataSet:
    """Fashion-MNIST (Xiao et al. 2017), 28x28 grey padded to 32x32; the offline stand-in for CIFAR-10.

    Kept as one channel in memory and repeated to three per batch, so the CIFAR
    ResNet-18 runs unchanged.
    """
    folder = find_fashion_mnist(settings.data_root)

    def load(kind: str) -> Split:
        images = read_idx(_idx_file(folder, FASHION_MNIST_FILES[f"{kind}_images"]))
        labels = read_idx(_idx_file(folder, FASHION_MNIST_FILES[f"{kind}_labels"]))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise PruneBenchError(f"Fashion-MNIST {kind} files in {folder} disagree: {images.shape} vs {labels.shape}")
        pad = (SIZE - images.shape[1]) // 2
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        x = F.pad(x, (pad, SIZE - images.shape[2] - pad, pad, SIZE - images.shape[1] - pad))
        return Split(x, torch.from_numpy(labels.astype(np.int64)))

    return DataSet(
        "fashion-mnist",
        load("train").head(settings.train_limit),
        load("test").head(settings.test_limit),
        mean=(0.2190,) * 3,  # of the padded 32x32 training images (0.2860 before padding)
        std=(0.3318,) * 3,
        note="Fashion-MNIST padded to 3x32x32, an offline stand-in for CIFAR-10: not CIFAR-10 results",
        source=str(folder),
    )


FOOLBOX_PNG = re.compile(r"cifar10_(\d\d)_(\d)\.png$")


def foolbox_cifar10_dir() -> Path:
    """Where foolbox keeps its 20 CIFAR-10 test PNGs, found without importing foolbox."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise PruneBenchError(
            "foolbox is not installed: `pip install --no-deps foolbox==3.3.4` provides 20 real CIFAR-10 test images"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not any(FOOLBOX_PNG.search(p.name) for p in folder.glob("cifar10_*.png")):
        raise PruneBenchError(f"no cifar10_NN_LABEL.png files in {folder}: reinstall foolbox==3.3.4")
    return folder


def cifar10_samples(settings: DataSettings | None = None) -> DataSet:
    """The first 20 real CIFAR-10 test images as shipped by foolbox 3.3.4 (evaluation only)."""
    from PIL import Image

    folder = foolbox_cifar10_dir()
    found = sorted((int(m.group(1)), int(m.group(2)), p) for p in folder.glob("cifar10_*.png") if (m := FOOLBOX_PNG.search(p.name)))
    images, labels = [], []
    for _, label, path in found:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if array.shape != (SIZE, SIZE, 3):
            raise PruneBenchError(f"{path} is {array.shape}, not a 32x32 RGB CIFAR-10 image")
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        labels.append(label)
    test = Split(torch.stack(images), torch.tensor(labels))
    if settings is not None:
        test = test.head(settings.test_limit)
    return DataSet(
        "cifar10-samples",
        None,
        test,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        note="the first 20 CIFAR-10 test images (from foolbox): a smoke test, too few for an accuracy figure",
        source=str(folder),
    )


# name -> loader; each loader takes DataSettings and returns a DataSet.
DATASETS: dict[str, Callable[[DataSettings], DataSet]] = {
    "cifar10": cifar10,
    "fashion-mnist": fashion_mnist,
    "synthetic": synthetic,
    "cifar10-samples": cifar10_samples,
}


def get_dataset(name: str) -> Callable[[DataSettings], DataSet]:
    """The loader registered as ``name``; an unknown name lists the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise PruneBenchError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}") from None


def load_data(settings: DataSettings) -> DataSet:
    """Check the settings and load the data set they name."""
    settings.check()
    return get_dataset(settings.dataset)(settings)
