"""Datasets: shapes, dtypes and tasks; seeded splits; the adding problem; MNIST and CIFAR-10 from real-format files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from models.losses import TASKS
from pipelines import data as D
from pipelines.config import ConfigError, RunConfig
from pipelines.data import DATASETS, INTEGER_LABELS, TaskData, adding_problem, segment1d
from pipelines.train import check_inputs

# dataset: (task, layout, input shape, outputs), at seq_len 12
EXPECTED = {
    "digits": ("classification", "image", (1, 8, 8), 10),
    "mnist1d": ("classification", "signal", (1, 40), 10),
    "teacher": ("regression", "vector", (16,), 1),
    "adding": ("regression", "sequence", (12, 2), 1),
    "temporal_order": ("classification", "sequence", (12, 6), 4),
    "diabetes": ("regression", "vector", (10,), 1),
    "breast_cancer": ("binary", "vector", (30,), 1),
    "segment1d": ("segmentation", "signal", (1, 12), 1),  # one mask channel; the length is seq_len
    "digits_metric": ("metric", "image", (1, 8, 8), 10),  # classes; the run's embed_dim sets the readout
}
DIMS = {"image": 3, "signal": 2, "sequence": 2, "vector": 1}
BUILTIN = sorted(name for name, d in DATASETS.items() if not d.files)  # every dataset that needs no files


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_datasets_load_with_the_right_shapes(name: str) -> None:
    data = TaskData(name, batch_size=16, seq_len=12)
    task, layout, in_shape, n_out = EXPECTED.get(
        name, (data.info.task, data.info.layout, data.in_shape, data.n_outputs)
    )
    assert (data.info.task, data.info.layout, data.in_shape, data.n_outputs) == (task, layout, in_shape, n_out)
    assert task in TASKS and len(in_shape) == DIMS[layout]
    if layout == "sequence":
        assert in_shape[0] == 12  # seq_len steps
    for tensors in (data.train.tensors, data.val.tensors):
        x, y = tensors
        assert x.dtype == torch.float32 and x.shape[1:] == in_shape
        if task in INTEGER_LABELS:
            assert y.dtype == torch.int64 and y.dim() == 1
            assert sorted(y.unique().tolist()) == list(range(n_out))  # every class occurs
        else:
            assert y.dtype == torch.float32 and y.shape[:2] == (len(x), n_out)
            # A segmentation target is a mask over the input's positions; other targets are (N, outputs).
            assert y.shape[2:] == (x.shape[2:] if task == "segmentation" else ())
        if task in ("binary", "segmentation"):
            assert set(y.unique().tolist()) == {0.0, 1.0}
        assert torch.isfinite(x).all() and len(x) > 0
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (16, *in_shape) and len(y) == 16


def test_file_based_datasets_are_the_two_documented_ones() -> None:
    assert {name for name, d in DATASETS.items() if d.files} == {"mnist", "cifar10"}
    assert set(EXPECTED) <= set(BUILTIN)


def test_digits_is_the_whole_sklearn_set_split_80_20() -> None:
    from sklearn.datasets import load_digits

    xt, yt, xv, yv = D.load_digits()
    target = load_digits().target
    assert (len(xt), len(xv)) == (1438, 359)
    assert sorted(np.concatenate([yt, yv]).tolist()) == sorted(target.tolist())
    assert not np.array_equal(yt, target[: len(yt)])  # shuffled before splitting
    assert abs(xt.mean()) < 1e-5 and xt.std() == pytest.approx(1.0, rel=1e-4)  # standardized on the training set


@pytest.mark.parametrize(
    "loader", [D.load_digits, D.load_teacher, D.load_adding, D.load_diabetes, D.load_breast_cancer, D.load_segment1d]
)
def test_splits_are_seeded(loader) -> None:
    loader.cache_clear()
    first = loader()
    loader.cache_clear()
    second = loader()
    assert first is not second
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_batch_order_follows_the_run_seed() -> None:
    def first_labels(seed: int) -> list[int]:
        return next(iter(TaskData("digits", batch_size=64, seed=seed).train_dataloader()))[1].tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(0) != first_labels(1)


def test_batch_larger_than_the_training_set_is_the_full_batch() -> None:
    data = TaskData("digits", batch_size=100_000)
    batches = list(data.train_dataloader())
    assert len(batches) == 1 and len(batches[0][0]) == 1438


@pytest.mark.parametrize("seq_len", [50, 7, 2])
def test_adding_problem_has_one_marker_in_each_half(seq_len: int) -> None:
    x, y = adding_problem(10_000, seq_len, np.random.default_rng(1))
    assert x.shape == (10_000, seq_len, 2) and y.shape == (10_000, 1)
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(np.unique(markers).tolist()) <= {0.0, 1.0}
    assert (markers.sum(axis=1) == 2).all()
    half = seq_len // 2
    assert (markers[:, :half].sum(axis=1) == 1).all() and (markers[:, half:].sum(axis=1) == 1).all()
    rows, cols = np.nonzero(markers)
    expected = np.zeros(10_000)
    np.add.at(expected, rows, values[rows, cols].astype(np.float64))
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-6)


def test_adding_problem_baseline_is_one_sixth() -> None:
    """Hochreiter & Schmidhuber 1997: always predicting the mean scores MSE = Var(U + U') = 1/6."""
    _, y = adding_problem(10_000, 50, np.random.default_rng(2))
    assert float(np.mean((y - y.mean()) ** 2)) == pytest.approx(1 / 6, abs=0.01)
    assert float(np.mean((y - 1.0) ** 2)) == pytest.approx(1 / 6, abs=0.01)


# -- scikit-learn's bundled tabular sets ----------------------------------------------------------


@pytest.mark.parametrize("name, sizes", [("diabetes", (354, 88)), ("breast_cancer", (455, 114))])
def test_tabular_sets_are_standardized_by_column_with_training_statistics(name: str, sizes: tuple) -> None:
    import sklearn.datasets

    raw = getattr(sklearn.datasets, f"load_{name}")()
    xt, yt, xv, yv = getattr(D, f"load_{name}")()
    assert (len(xt), len(xv)) == sizes and sum(sizes) == len(raw.data)
    assert xt.dtype == xv.dtype == yt.dtype == np.float32 and yt.shape == (len(xt), 1)
    np.testing.assert_allclose(xt.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(xt.std(axis=0), 1, rtol=1e-4)
    # The validation rows are mapped with the training rows' statistics, not their own.
    raw_t, raw_yt, raw_v, raw_yv = D._split(raw.data.astype(np.float64), raw.target.reshape(-1, 1).astype(np.float64))
    mean, std = raw_t.mean(axis=0), raw_t.std(axis=0)
    np.testing.assert_allclose(xv, (raw_v - mean) / std, rtol=1e-5, atol=1e-5)
    if name == "diabetes":  # the target is standardized the same way
        np.testing.assert_allclose(yt, (raw_yt - raw_yt.mean()) / raw_yt.std(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(yv, (raw_yv - raw_yt.mean()) / raw_yt.std(), rtol=1e-5, atol=1e-5)
    else:  # 0 = malignant, 1 = benign, as scikit-learn codes them
        np.testing.assert_array_equal(np.concatenate([yt, yv]).ravel(), np.concatenate([raw_yt, raw_yv]).ravel())
        assert (np.concatenate([yt, yv]) == 1).sum() == 357 and (np.concatenate([yt, yv]) == 0).sum() == 212


def test_digits_metric_serves_the_digits() -> None:
    metric, digits = TaskData("digits_metric"), TaskData("digits")
    for a, b in zip(metric.train.tensors + metric.val.tensors, digits.train.tensors + digits.val.tensors):
        assert torch.equal(a, b)


# -- the 1-D segmentation task --------------------------------------------------------------------


def _runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of ones in a 0/1 row."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], row, [0]])))
    return (edges[1::2] - edges[::2]).tolist()


@pytest.mark.parametrize("seq_len", [50, 12, 2])
def test_segment1d_masks_are_one_to_three_intervals(seq_len: int) -> None:
    x, m = segment1d(3000, seq_len, np.random.default_rng(1))
    assert x.shape == m.shape == (3000, 1, seq_len) and x.dtype == m.dtype == np.float32
    assert set(np.unique(m).tolist()) <= {0.0, 1.0} and np.isfinite(x).all()
    shortest = min(max(1, seq_len // 10), seq_len)
    runs = [_runs(row) for row in m[:, 0]]
    assert all(1 <= len(r) <= 3 for r in runs)  # one to three intervals; overlapping or touching ones merge
    assert all(min(r) >= shortest for r in runs)
    if seq_len == 50:  # every count occurs, and an unmerged interval is at most L // 5 long
        assert {len(r) for r in runs} == {1, 2, 3}
        assert max(max(r) for r in runs if len(r) == 3) <= 10


def test_segment1d_signal_is_the_raised_box_under_unit_noise() -> None:
    x, m = segment1d(4000, 50, np.random.default_rng(2))
    outside, inside = x[m == 0], x[m == 1]
    assert abs(outside.mean()) < 0.02 and outside.std() == pytest.approx(1.0, abs=0.02)  # noise alone
    # Inside: amplitude uniform in [1, 2] (mean 1.5; a little more where intervals overlap) plus the noise.
    assert 1.5 <= inside.mean() < 1.6 and inside.std() == pytest.approx(np.sqrt(1 + 1 / 12), abs=0.05)


def test_segment1d_baselines_are_the_documented_ones() -> None:
    """The numbers of the docstring and the README, on the validation set at the default length 50."""
    _, _, x, m = D.load_segment1d(seq_len=50)
    x, m = x[:, 0], m[:, 0]

    def dice(pred: np.ndarray) -> float:
        return float(np.mean(2 * (pred * m).sum(1) / (pred.sum(1) + m.sum(1))))

    smooth = np.stack([np.convolve(row, np.ones(5) / 5, mode="same") for row in x])
    assert m.mean() == pytest.approx(0.28, abs=0.005)
    assert dice(np.ones_like(m)) == pytest.approx(0.42, abs=0.005)
    assert max(dice((x > t).astype(float)) for t in np.arange(0.5, 1.55, 0.1)) == pytest.approx(0.63, abs=0.005)
    assert max(dice((smooth > t).astype(float)) for t in np.arange(0.5, 1.05, 0.1)) == pytest.approx(0.80, abs=0.005)


# -- MNIST and CIFAR-10 from files in their real formats ----------------------------------------


def _idx(array: np.ndarray) -> bytes:
    """The IDX format: magic 0x0000 08 <ndim> (big-endian), one 4-byte big-endian size per dimension, uint8 data."""
    magic = 0x00000800 | array.ndim  # 0x00000803 for images, 0x00000801 for labels
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_mnist(root: Path, compress: bool, sizes: tuple[int, int] = (6, 4)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (sizes[0], 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9][: sizes[0]], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (sizes[1], 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2, 1, 0][: sizes[1]], dtype=np.uint8),
    }
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        raw = _idx(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


def test_idx_header_is_what_the_format_says() -> None:
    header = _idx(np.zeros((2, 28, 28), dtype=np.uint8))[:16]
    assert header == bytes.fromhex("00000803000000020000001c0000001c")
    assert _idx(np.zeros(3, dtype=np.uint8))[:8] == bytes.fromhex("0000080100000003")


def _whole_training_set(data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and the held-out validation split put back in the files' order."""
    train, val = D.validation_indices(len(data.train) + len(data.val))
    x = torch.cat([data.train.tensors[0], data.val.tensors[0]])
    y = torch.cat([data.train.tensors[1], data.val.tensors[1]])
    order = torch.from_numpy(np.argsort(np.concatenate([train, val])))
    return x[order], y[order]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_mnist_from_idx_files(tmp_path: Path, compress: bool) -> None:
    arrays = _write_mnist(tmp_path, compress)
    assert D.missing_files("mnist", str(tmp_path)) is None
    data = TaskData("mnist", data_dir=str(tmp_path), batch_size=4)
    assert data.in_shape == (1, 28, 28) and data.info.task == "classification"
    x, y = _whole_training_set(data)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    expected = (arrays["train-images-idx3-ubyte"][:, None] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    xv, yv = data.test.tensors  # the official test split
    assert xv.shape == (4, 1, 28, 28) and yv.tolist() == [7, 2, 1, 0]
    np.testing.assert_allclose(
        xv[2, 0, 5, 7].item(), (arrays["t10k-images-idx3-ubyte"][2, 5, 7] / 255 - 0.1307) / 0.3081, rtol=1e-5
    )


def _write_cifar(
    root: Path, per_batch: int = 2, n_test: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 python batches: pickled dicts, b'data' (N, 3072) uint8 = 1024 red, 1024 green, 1024 blue, row-major."""
    rng = np.random.default_rng(4)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = [], []
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        img = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        rows = np.stack([np.concatenate([img[j, 0].ravel(), img[j, 1].ravel(), img[j, 2].ravel()]) for j in range(n)])
        lab = [int(v) for v in rng.integers(0, 10, n)]
        lab[0] = i  # every class index up to 5 appears
        batch = {b"batch_label": name.encode(), b"labels": lab, b"data": rows, b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        images.append(img)
        labels.append(lab)
    xt, yt = np.concatenate(images[:-1]), np.concatenate(labels[:-1])
    return xt, yt, images[-1], np.asarray(labels[-1])


def test_cifar10_from_python_batches(tmp_path: Path) -> None:
    xt, yt, xv, yv = _write_cifar(tmp_path)
    assert D.missing_files("cifar10", str(tmp_path)) is None
    data = TaskData("cifar10", data_dir=str(tmp_path), batch_size=4)
    assert data.in_shape == (3, 32, 32) and data.info.task == "classification"
    x, y = _whole_training_set(data)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == yt.tolist() and data.test.tensors[1].tolist() == yv.tolist()
    # Per-channel standardization with the training set's statistics.
    got = x.double().numpy()
    np.testing.assert_allclose(got.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(got.std(axis=(0, 2, 3)), 1, rtol=1e-5)
    for c in range(3):
        mean, std = xt[:, c].mean() / 255, xt[:, c].std() / 255
        np.testing.assert_allclose(got[:, c], (xt[:, c] / 255 - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            data.test.tensors[0][:, c].numpy(), (xv[:, c] / 255 - mean) / std, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("dataset, folder", [("mnist", "mnist"), ("cifar10", "cifar-10-batches-py")])
def test_missing_files_are_a_config_error_naming_data_dir(tmp_path: Path, dataset: str, folder: str) -> None:
    missing = tmp_path / "nowhere"
    cfg = RunConfig(dataset=dataset, data_dir=str(missing))
    with pytest.raises(ConfigError) as err:
        check_inputs(cfg)
    assert err.value.field == "data_dir"
    assert "data_dir" in str(err.value) and str(missing) in str(err.value) and folder in str(err.value)


def test_a_partial_mnist_folder_names_what_is_missing(tmp_path: Path) -> None:
    _write_mnist(tmp_path, compress=True)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as err:
        check_inputs(RunConfig(dataset="mnist", data_dir=str(tmp_path)))
    message = str(err.value)
    assert "lacks t10k-labels-idx1-ubyte" in message
    assert "lacks train" not in message


def test_builtin_datasets_need_no_files(tmp_path: Path) -> None:
    for name in EXPECTED:
        assert D.missing_files(name, str(tmp_path / "nowhere")) is None


# -- held-out validation, official test split ---------------------------------------------------------


@pytest.mark.parametrize("n", [4000, 7])
def test_validation_indices_are_a_seeded_disjoint_split_of_the_training_data(n: int) -> None:
    train, val = D.validation_indices(n)
    assert len(set(train) & set(val)) == 0 and sorted([*train, *val]) == list(range(n))
    assert len(val) == round(0.2 * n)
    again_train, again_val = D.validation_indices(n)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)


def test_mnist1d_validates_on_training_data_and_keeps_its_test_split_apart() -> None:
    """Validation examples are held-out training examples, none a test example; the test split is the official one."""
    x_train, y_train, x_test, y_test = D.load_mnist1d()
    data = TaskData("mnist1d", batch_size=32)
    assert [d.official_test for d in DATASETS.values()].count(True) == 3
    assert DATASETS["mnist"].official_test and DATASETS["cifar10"].official_test
    assert len(data.train) + len(data.val) == len(x_train) and len(data.val) == 800
    assert torch.equal(data.test.tensors[0], torch.from_numpy(x_test))
    assert torch.equal(data.test.tensors[1], torch.from_numpy(y_test))
    rows = {row.tobytes(): i for i, row in enumerate(x_train)}
    val_rows = {rows[x.numpy().tobytes()] for x in data.val.tensors[0]}
    train_rows = {rows[x.numpy().tobytes()] for x in data.train.tensors[0]}
    assert len(val_rows) == 800 and not val_rows & train_rows  # every val example is a held-out training one
    test_rows = {x.tobytes() for x in x_test}
    assert not any(x.numpy().tobytes() in test_rows for x in data.val.tensors[0])
    assert data.test_loader() is not None and TaskData("digits").test_loader() is None  # digits: no test split


def test_a_run_records_test_metrics_once_at_the_end(tracking: str) -> None:
    """test/acc and test/loss: one value each, at the last step, equal to an independent evaluation of the net."""
    from mlflow.tracking import MlflowClient

    from gradprobe import keys as K
    from pipelines import train

    kept = {}
    cfg = RunConfig(dataset="mnist1d", model="mlp", depth=2, width=16, max_steps=6, batch_size=32, log_every=3)
    result = train.run(cfg, on_trained=lambda run_id, lit: kept.update(net=lit.net))
    assert K.TEST_ACC not in result.metrics and K.TEST_LOSS not in result.metrics  # what a study reads
    client = MlflowClient()
    _, _, x_test, y_test = D.load_mnist1d()
    with torch.no_grad():
        out = kept["net"](torch.from_numpy(x_test))
    expected = {
        K.TEST_ACC: (out.argmax(1).numpy() == y_test).mean(),
        K.TEST_LOSS: torch.nn.functional.cross_entropy(out, torch.from_numpy(y_test)).item(),
    }
    for key, value in expected.items():
        history = client.get_metric_history(result.run_id, key)
        assert len(history) == 1 and history[0].step == cfg.max_steps
        assert history[0].value == pytest.approx(value, rel=1e-5)


def test_no_study_objective_reads_the_test_split() -> None:
    from gradprobe import keys as K
    from studies import list_specs
    from studies.spec import OBJECTIVE_METRICS, SpecError, load_spec, parse_spec

    assert not [m for m in OBJECTIVE_METRICS if m.startswith("test/")]
    assert all(not load_spec(name).metric.startswith("test/") for name in list_specs())
    raw = {
        "name": "t",
        "fixed": {"dataset": "mnist1d"},
        "space": {"depth": [2, 3]},
        "objective": {"metric": K.TEST_ACC},
    }
    with pytest.raises(SpecError, match="objective.metric"):
        parse_spec(raw, "t.yaml")
