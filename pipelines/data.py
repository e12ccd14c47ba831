"""Tasks as in-memory tensors and the Lightning data module that serves them.

Synthetic tasks and splits use a fixed data seed, so every run of a study sees the same data and the
run's `seed` varies only initialization and batch order. MNIST and CIFAR-10 are read from local files
in their standard formats; nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import math
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

DATA_SEED = 0
VAL_BATCH = 1024
INTEGER_LABELS = ("classification", "metric")  # tasks whose targets are class indices (int64)
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_val, y_val


@dataclass(frozen=True)
class Dataset:
    """A task: what it predicts, how its inputs are laid out, and how to load it."""

    task: str  # one of models.losses.TASKS: classification, regression, binary, segmentation, metric, adversarial
    layout: str  # image (C, H, W), signal (C, L), sequence (T, F) or vector (F,)
    load: Callable[[str, int], Arrays]  # (data_dir, seq_len) -> arrays
    files: str = ""  # where local files must be, for the error message; "" when none are needed
    # The loader's second pair is the official test split: validation is held out of the training data
    # (`validation_indices`) and the test split is evaluated once, after training (test/acc, test/loss).
    official_test: bool = False


def validation_indices(n: int, val_share: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of n training examples: a seeded (DATA_SEED), disjoint split."""
    order = np.random.default_rng(DATA_SEED).permutation(n)
    n_val = int(round(n * val_share))
    return order[n_val:], order[:n_val]


def _split(x: np.ndarray, y: np.ndarray, val_share: float = 0.2) -> Arrays:
    train, val = validation_indices(len(x), val_share)
    return x[train], y[train], x[val], y[val]


def _standardize(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = x_train.mean(), x_train.std()
    return [((a - mean) / std).astype(np.float32) for a in (x_train, *others)]


def _standardize_columns(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    # Per column, unlike the images' one global scale: tabular features come in unrelated units.
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return [((a - mean) / std).astype(np.float32) for a in (x_train, *others)]


@functools.cache
def load_digits(data_dir: str = "", seq_len: int = 0) -> Arrays:
    """scikit-learn's bundled 8×8 digits (1,797 images), standardized, 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    xt, yt, xv, yv = _split(d.data.reshape(-1, 1, 8, 8), d.target)
    xt, xv = _standardize(xt, xv)
    return xt, yt, xv, yv


@functools.cache
def load_mnist1d(data_dir: str = "", seq_len: int = 0) -> Arrays:
    """MNIST-1D (Greydanus 2020), generated procedurally: 4,000 train and 1,000 test signals of length 40."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    f32 = np.float32
    return d["x"][:, None].astype(f32), d["y"], d["x_test"][:, None].astype(f32), d["y_test"]


@functools.cache
def load_teacher(data_dir: str = "", seq_len: int = 0, n: int = 4096, d_in: int = 16, hidden: int = 32) -> Arrays:
    """Regression on a random two-hidden-layer tanh teacher network, standardized targets."""
    rng = np.random.default_rng(DATA_SEED)
    x = rng.standard_normal((n, d_in))
    w1 = rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)
    w2 = rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)
    w3 = rng.standard_normal((hidden, 1)) / np.sqrt(hidden)
    y = np.tanh(np.tanh(x @ w1 * 2) @ w2 * 2) @ w3
    y = (y - y.mean()) / y.std()
    xt, yt, xv, yv = _split(x.astype(np.float32), y.astype(np.float32))
    return xt, yt, xv, yv


@functools.cache
def load_diabetes(data_dir: str = "", seq_len: int = 0) -> Arrays:
    """scikit-learn's bundled diabetes regression (Efron et al. 2004): 442 patients, 10 features, disease
    progression after a year; features and target standardized with the training split's statistics."""
    from sklearn.datasets import load_diabetes as sk_diabetes

    d = sk_diabetes(scaled=False)  # raw units; the statistics come from the training split alone
    xt, yt, xv, yv = _split(d.data, d.target.reshape(-1, 1))
    xt, xv = _standardize_columns(xt, xv)
    yt, yv = _standardize_columns(yt, yv)
    return xt, yt, xv, yv


@functools.cache
def load_breast_cancer(data_dir: str = "", seq_len: int = 0) -> Arrays:
    """scikit-learn's bundled Wisconsin breast cancer set: 569 tumours, 30 features, target 1 = benign
    (62.7 %), 0 = malignant, as (N, 1) floats; features standardized with the training split's statistics."""
    from sklearn.datasets import load_breast_cancer as sk_breast_cancer

    d = sk_breast_cancer()
    xt, yt, xv, yv = _split(d.data, d.target.reshape(-1, 1).astype(np.float32))
    xt, xv = _standardize_columns(xt, xv)
    return xt, yt, xv, yv


def adding_problem(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hochreiter & Schmidhuber's adding problem: (n, T, 2) inputs, (n, 1) targets.

    Channel 0 holds values uniform in [0, 1], channel 1 marks one step in the first half and one in
    the second; the target is the sum of the two marked values. Predicting the mean (1.0) scores
    MSE = Var(U + U') = 1/6 ≈ 0.167.
    """
    values = rng.uniform(0.0, 1.0, (n, seq_len))
    half = max(1, seq_len // 2)
    first = rng.integers(0, half, n)
    second = rng.integers(half, seq_len, n) if seq_len > 1 else first
    markers = np.zeros((n, seq_len))
    markers[np.arange(n), first] = 1.0
    markers[np.arange(n), second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values * markers).sum(axis=1, keepdims=True).astype(np.float32)
    return x, y


def _generated(
    make: Callable[[int, int, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    seq_len: int,
    n_train: int,
    n_val: int,
) -> Arrays:
    rng = np.random.default_rng(DATA_SEED)  # training then validation sequences from one fixed stream
    xt, yt = make(n_train, seq_len, rng)
    xv, yv = make(n_val, seq_len, rng)
    return xt, yt, xv, yv


@functools.cache
def load_adding(data_dir: str = "", seq_len: int = 50, n_train: int = 8000, n_val: int = 1000) -> Arrays:
    """The adding problem with `seq_len` steps: 8,000 training and 1,000 validation sequences."""
    return _generated(adding_problem, seq_len, n_train, n_val)


def temporal_order(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The temporal order problem (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013): (n, T, 6), labels.

    Each step is a one-hot symbol: distractors a–d everywhere except two relevant symbols, X or Y,
    one at a random step in [10 %, 20 %) of the sequence and one in [50 %, 60 %). The class (0–3) is
    the order seen: XX, XY, YX, YY. Chance accuracy is 25 %.
    """
    symbols = rng.integers(0, 4, (n, seq_len))  # distractors a, b, c, d
    first = rng.integers(int(0.1 * seq_len), max(int(0.2 * seq_len), int(0.1 * seq_len) + 1), n)
    second = rng.integers(int(0.5 * seq_len), max(int(0.6 * seq_len), int(0.5 * seq_len) + 1), n)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)  # 0 = X, 1 = Y
    symbols[np.arange(n), first] = 4 + a
    symbols[np.arange(n), second] = 4 + b
    x = np.eye(6, dtype=np.float32)[symbols]
    return x, (2 * a + b).astype(np.int64)


@functools.cache
def load_temporal_order(data_dir: str = "", seq_len: int = 50, n_train: int = 8000, n_val: int = 1000) -> Arrays:
    """The temporal order problem with `seq_len` steps: 8,000 training and 1,000 validation sequences."""
    return _generated(temporal_order, seq_len, n_train, n_val)


SEGMENT_AMPLITUDE = (1.0, 2.0)  # an interval is raised by a uniform amount in this range; noise std is 1
SEGMENT_MAX_INTERVALS = 3


def segment1d(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D segmentation task: (n, 1, L) noisy signals and their (n, 1, L) 0/1 masks, L = seq_len.

    Each signal has 1 to 3 intervals (uniformly many), each of length uniform in [max(1, L // 10),
    max(2, L // 5)] at a uniform start that fits, raised by an amplitude uniform in [1, 2] (a box), under
    standard Gaussian noise everywhere; intervals may overlap, the mask is their union (1 inside). At
    L = 50 (the validation set): 28 % of positions are foreground; an all-ones mask scores Dice 0.42;
    thresholding single samples at best Dice 0.63; a 5-sample moving average then a threshold Dice 0.80.
    """
    lo, hi = max(1, seq_len // 10), max(2, seq_len // 5)
    positions = np.arange(seq_len)
    count = rng.integers(1, SEGMENT_MAX_INTERVALS + 1, n)
    mask = np.zeros((n, seq_len), dtype=bool)
    raised = np.zeros((n, seq_len))
    for j in range(SEGMENT_MAX_INTERVALS):  # every slot draws, used or not, so the stream does not depend on count
        length = np.minimum(rng.integers(lo, hi + 1, n), seq_len)
        start = rng.integers(0, seq_len - length + 1)
        amplitude = rng.uniform(*SEGMENT_AMPLITUDE, n)
        inside = (j < count)[:, None] & (positions >= start[:, None]) & (positions < (start + length)[:, None])
        mask |= inside
        raised = np.maximum(raised, inside * amplitude[:, None])
    x = raised + rng.standard_normal((n, seq_len))
    return x[:, None].astype(np.float32), mask[:, None].astype(np.float32)


@functools.cache
def load_segment1d(data_dir: str = "", seq_len: int = 50, n_train: int = 4000, n_val: int = 1000) -> Arrays:
    """The 1-D segmentation task with signals of `seq_len` samples: 4,000 training and 1,000 validation."""
    return _generated(segment1d, seq_len, n_train, n_val)


GMM_MODES, GMM_RADIUS, GMM_STD = 8, 2.0, 0.05  # the adversarial task's ring of Gaussians


def gmm_centers(n_modes: int = GMM_MODES, radius: float = GMM_RADIUS) -> np.ndarray:
    """The (n_modes, 2) mode centres, evenly spaced on a circle of `radius`, the first at angle 0."""
    angle = 2 * np.pi * np.arange(n_modes) / n_modes
    return (radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)).astype(np.float32)


def gaussian_ring(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points of the 2-D mixture of GMM_MODES equally likely isotropic Gaussians (std GMM_STD) on a ring.

    The classic GAN toy (Metz et al. 2017, Srivastava et al. 2017): modes are 2·R·sin(π/8) ≈ 1.53 apart,
    about 30σ. There are no labels: the targets are the points themselves (the data space the generator
    writes to). `seq_len` is unused.
    """
    centers = gmm_centers()
    x = centers[rng.integers(0, len(centers), n)] + GMM_STD * rng.standard_normal((n, 2))
    x = x.astype(np.float32)
    return x, x.copy()


@functools.cache
def load_gmm(data_dir: str = "", seq_len: int = 0, n_train: int = 8000, n_val: int = 1000) -> Arrays:
    """The ring of Gaussians: 8,000 training and 1,000 validation points."""
    return _generated(gaussian_ring, seq_len, n_train, n_val)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not; ValueError naming the file if it is not a whole one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or damaged gzip stream
        raise ValueError(f"{path}: {exc}") from None
    if len(data) < 4 or data[:3] != b"\0\0\x08":  # two zero bytes, then 0x08: unsigned bytes
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (it starts with {data[:4].hex() or 'nothing'})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != 4 + 4 * ndim + math.prod(shape):  # a cut file would otherwise fail deep inside numpy
        raise ValueError(
            f"{path}: {len(data)} bytes, but its header {shape} needs {4 + 4 * ndim + math.prod(shape)} "
            "(a truncated or damaged file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_dir(data_dir: str) -> Path:
    """Where the MNIST IDX files are looked for."""
    return Path(data_dir) / "mnist"


def cifar_dir(data_dir: str) -> Path:
    """Where the CIFAR-10 python batches are looked for."""
    return Path(data_dir) / "cifar-10-batches-py"


@functools.cache
def load_mnist(data_dir: str, seq_len: int = 0) -> Arrays:
    """MNIST from its four IDX files under `data_dir/mnist/`: train, then the official test set."""
    folder = mnist_dir(data_dir)
    xt, yt, xv, yv = (read_idx(_find(folder, name)) for name in MNIST_FILES)
    if len(xt) != len(yt) or len(xv) != len(yv):
        raise ValueError(f"{folder}: {len(xt)}/{len(xv)} images but {len(yt)}/{len(yv)} labels (train/test)")
    xt, xv = ((a[:, None] / 255.0 - 0.1307) / 0.3081 for a in (xt, xv))
    return xt.astype(np.float32), yt.astype(np.int64), xv.astype(np.float32), yv.astype(np.int64)


class BadBatch(ValueError):
    """A file that is not a CIFAR-10 python batch; the message is one sentence naming it and why."""


class _BatchUnpickler(pickle.Unpickler):
    """Rebuilds only what CIFAR-10's python batches hold (a dict of bytes, ints, lists and NumPy arrays):
    a pickle can call any importable function, so a file in a data_dir must not name anything else."""

    # NumPy 1 and 2 name _reconstruct differently; _codecs.encode is how protocol 2 writes Python 3 bytes.
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 3, 32, 32) uint8 and labels of one python batch; BadBatch for anything else."""
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
        images, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    except Exception as err:  # whatever a foreign file makes the unpickler raise, it is not a batch
        raise BadBatch(f"{path} is not a CIFAR-10 python batch ({' '.join(str(err).split())})") from None
    if (
        images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != 3 * 32 * 32
        or labels.shape != images.shape[:1]
    ):
        raise BadBatch(f"{path} is not a CIFAR-10 python batch (b'data' must be (N, 3072) uint8, b'labels' N labels)")
    return images.reshape(-1, 3, 32, 32), labels


@functools.cache
def load_cifar10(data_dir: str, seq_len: int = 0) -> Arrays:
    """CIFAR-10 from its python batches under `data_dir/cifar-10-batches-py/`: train, then the test batch."""
    folder = cifar_dir(data_dir)
    parts = [_cifar_batch(folder / name) for name in CIFAR_FILES]
    xt = np.concatenate([p[0] for p in parts[:-1]])
    yt = np.concatenate([p[1] for p in parts[:-1]])
    xv, yv = parts[-1]
    mean = xt.mean(axis=(0, 2, 3), keepdims=True) / 255.0
    std = xt.std(axis=(0, 2, 3), keepdims=True) / 255.0
    xt, xv = (((a / 255.0 - mean) / std).astype(np.float32) for a in (xt, xv))
    return xt, yt.astype(np.int64), xv, yv.astype(np.int64)


DATASETS: dict[str, Dataset] = {
    "digits": Dataset("classification", "image", load_digits),
    "mnist1d": Dataset("classification", "signal", load_mnist1d, official_test=True),
    "teacher": Dataset("regression", "vector", load_teacher),
    "adding": Dataset("regression", "sequence", load_adding),
    "temporal_order": Dataset("classification", "sequence", load_temporal_order),
    "diabetes": Dataset("regression", "vector", load_diabetes),
    "breast_cancer": Dataset("binary", "vector", load_breast_cancer),
    "segment1d": Dataset("segmentation", "signal", load_segment1d),
    # The digits again, for metric learning: a dataset of its own because the task decides what the
    # network outputs (an embedding), which losses fit and what validation measures.
    "digits_metric": Dataset("metric", "image", load_digits),
    "gmm": Dataset("adversarial", "vector", load_gmm),  # a GAN learns its distribution (models/gan.py)
    "mnist": Dataset("classification", "image", load_mnist, files="mnist", official_test=True),
    "cifar10": Dataset("classification", "image", load_cifar10, files="cifar10", official_test=True),
}


def missing_files(dataset: str, data_dir: str) -> str | None:
    """Why `dataset` cannot be read from `data_dir` (a sentence), or None when its files are there."""
    if DATASETS[dataset].files == "mnist":
        folder = mnist_dir(data_dir)
        absent = [n for n in MNIST_FILES if _find(folder, n) is None]
        if absent:
            return (
                f"a folder whose mnist/ holds the IDX files {', '.join(n + '[.gz]' for n in MNIST_FILES)}; "
                f"{folder}/ lacks {', '.join(absent)} (see docs/data.md, linked from the README)"
            )
    if DATASETS[dataset].files == "cifar10":
        folder = cifar_dir(data_dir)
        absent = [n for n in CIFAR_FILES if not (folder / n).exists()]
        if absent:
            return (
                f"a folder whose cifar-10-batches-py/ holds the python batches {', '.join(CIFAR_FILES)}; "
                f"{folder}/ lacks {', '.join(absent)} (see docs/data.md, linked from the README)"
            )
        return _unreadable_cifar(str(folder))
    return None


@functools.cache
def _unreadable_cifar(folder: str) -> str | None:
    """Why a batch in `folder` is refused, read before any run exists by the same safe reader as training."""
    try:
        for name in CIFAR_FILES:
            _cifar_batch(Path(folder) / name)
    except BadBatch as err:
        return f"python batches that hold only arrays, lists, numbers and bytes; {err}"
    return None


def unreadable(dataset: str, data_dir: str, seq_len: int = 0) -> str | None:
    """Why `dataset` cannot be read from `data_dir` (files missing, truncated or damaged), or None; loads (cached)."""
    problem = missing_files(dataset, data_dir)
    if problem or not DATASETS[dataset].files:
        return problem
    try:
        DATASETS[dataset].load(data_dir, seq_len)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        return f"readable {dataset} files; {' '.join(str(exc).split())}"
    return None


class TaskData(pl.LightningDataModule):
    """Serves a dataset as shuffled mini-batches (seeded) and sequential validation batches."""

    def __init__(self, dataset: str, *, data_dir: str = "data", batch_size: int = 64, seq_len: int = 50, seed: int = 0):
        super().__init__()
        self.info = DATASETS[dataset]
        problem = missing_files(dataset, data_dir)
        if problem:
            raise FileNotFoundError(f"dataset {dataset!r} in data_dir {data_dir!r}: {problem}")
        self.batch_size, self.seed = batch_size, seed
        xt, yt, xv, yv = self.info.load(data_dir, seq_len)
        label = torch.long if self.info.task in INTEGER_LABELS else torch.float32

        def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.from_numpy(np.asarray(x)), torch.as_tensor(y, dtype=label))

        self.test: TensorDataset | None = None  # the official test split, where the dataset has one
        if self.info.official_test:
            self.test = tensors(xv, yv)
            train, val = validation_indices(len(xt))
            xt, yt, xv, yv = xt[train], yt[train], xt[val], yt[val]
        self.train, self.val = tensors(xt, yt), tensors(xv, yv)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input example."""
        return tuple(self.train.tensors[0].shape[1:])

    @property
    def n_outputs(self) -> int:
        """Classes for integer labels, else target channels (regression dimensions; 1 for binary and masks)."""
        y = self.train.tensors[1]
        return int(y.max()) + 1 if self.info.task in INTEGER_LABELS else y.shape[1]

    def _loader(self, data: TensorDataset, sampler) -> DataLoader:
        # batch_size=None hands each index list to TensorDataset in one go: one gather per batch
        # instead of collating examples one by one.
        return DataLoader(data, batch_size=None, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        n = len(self.train)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = BatchSampler(RandomSampler(self.train, generator=generator), min(self.batch_size, n), drop_last=True)
        return self._loader(self.train, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, BatchSampler(SequentialSampler(self.val), VAL_BATCH, drop_last=False))

    def test_loader(self) -> DataLoader | None:
        """The official test split in sequential batches, or None (not `test_dataloader`: no study's loop sees it)."""
        if self.test is None:
            return None
        return self._loader(self.test, BatchSampler(SequentialSampler(self.test), VAL_BATCH, drop_last=False))
