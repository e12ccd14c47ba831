"""The memory estimate: parameter counts and activation sizes against built networks, data sizes against the data."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.lit import n_parameters as counted
from models.registry import MODELS, create_model
from pipelines.config import ConfigError, RunConfig
from pipelines.data import DATASETS, TaskData
from pipelines.memory import DATA_SHAPES, ESTIMATORS, _network, check_fits, estimate, memory_limit, n_parameters


def test_every_model_family_and_dataset_has_an_estimate() -> None:
    assert set(ESTIMATORS) == set(MODELS)
    assert set(DATA_SHAPES) == set(DATASETS)


@pytest.mark.parametrize("dataset", [name for name, d in DATASETS.items() if not d.files])
@pytest.mark.parametrize("seq_len", [7, 50])
def test_data_shapes_are_those_of_the_loaded_data(dataset: str, seq_len: int) -> None:
    data, shape = TaskData(dataset, seq_len=seq_len), DATA_SHAPES[dataset](seq_len)
    assert shape.in_shape == data.in_shape
    n_test = 0 if data.test is None else len(data.test)
    assert (shape.n_train, shape.n_val, shape.n_test, shape.n_outputs) == (
        len(data.train),
        len(data.val),
        n_test,
        data.n_outputs,
    )
    assert shape.target_size == math.prod(data.train.tensors[1].shape[1:])


CASES = [
    *[
        dict(model=m, dataset=d, norm=n, depth=dp, width=w)
        for m, d in (("mlp", "digits"), ("resmlp", "digits"), ("mlp", "mnist1d"))
        for n, dp, w in (("none", 1, 3), ("batch", 3, 5), ("layer", 2, 4))
    ],
    *[
        dict(
            model="cnn",
            dataset=d,
            norm=n,
            depth=dp,
            width=3,
            kernel_size=k,
            stride=s,
            pool=p,
            head=h,
            loss="mse" if d == "adding" else "ce",
        )
        for d, n, dp, k, s, p, h in (
            ("digits", "none", 3, 3, 1, "none", "gap"),
            ("digits", "batch", 4, 5, 2, "max", "flatten"),
            ("mnist1d", "layer", 5, 3, 2, "none", "flatten"),
            ("mnist1d", "none", 2, 1, 1, "max", "gap"),
            ("adding", "none", 2, 3, 1, "none", "gap"),
        )
    ],
    dict(model="cnn", dataset="segment1d", loss="bce", depth=3, width=4, head="dense"),
    *[
        dict(model=m, dataset=d, depth=dp, width=5, norm=n, **({"loss": "mse"} if d == "adding" else {}))
        for m, (d, dp, n) in itertools.product(("rnn", "lstm", "gru"), (("adding", 2, "none"), ("mnist1d", 1, "layer")))
    ],
    dict(model="mlp", dataset="digits_metric", loss="triplet", embed_dim=7, depth=2, width=6),
    dict(model="mlp", dataset="gmm", loss="gan_nonsaturating", latent_dim=5, depth=2, width=6),
]


def _built(cfg: RunConfig) -> torch.nn.Module:
    data = TaskData(cfg.dataset, seq_len=cfg.seq_len)
    n_outputs = cfg.embed_dim if cfg.task == "metric" else data.n_outputs
    gan = cfg.task == "adversarial"
    in_shape, layout = ((cfg.latent_dim,), "vector") if gan else (data.in_shape, data.info.layout)
    return create_model(
        cfg.model,
        in_shape=in_shape,
        layout=layout,
        n_outputs=n_outputs,
        depth=cfg.depth,
        width=cfg.width,
        activation=cfg.activation,
        norm=cfg.norm,
        res_scale=cfg.res_scale,
        kernel_size=cfg.kernel_size,
        padding=cfg.padding,
        stride=cfg.stride,
        pool=cfg.pool,
        head=cfg.head,
    )


@pytest.mark.parametrize("fields", CASES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_parameter_count_is_the_built_networks(fields: dict) -> None:
    cfg = RunConfig(**{"seq_len": 9, **fields})
    assert n_parameters(cfg) == counted(_built(cfg))


@pytest.mark.parametrize(
    "fields",
    [f for f in CASES if f["model"] in ("mlp", "cnn") and "latent_dim" not in f],
    ids=lambda f: "-".join(str(v) for v in f.values()),
)
def test_activation_numbers_are_what_the_hidden_blocks_output(fields: dict) -> None:
    cfg = RunConfig(**{"seq_len": 9, **fields})
    net, data = _built(cfg), TaskData(cfg.dataset, seq_len=cfg.seq_len)
    x = data.train.tensors[0][:2]
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in net.layers]
    with torch.no_grad():
        out = net(x)
    for hook in hooks:
        hook.remove()
    per_example = sum(o[0].numel() for o in outputs) + (out[0].numel() if cfg.head == "dense" else 0)
    assert _network(cfg)[1] == per_example


def test_estimate_grows_with_each_sizing_field() -> None:
    base = RunConfig(model="cnn")
    for name in ("width", "depth", "kernel_size", "batch_size", "max_steps"):
        assert estimate(base.replace(**{name: getattr(base, name) * 4 + 1})).total > estimate(base).total, name


@pytest.mark.parametrize(
    "fields, blamed",
    [
        ({"width": 10_000_000}, "width"),
        ({"depth": 100_000}, "depth"),
        ({"model": "cnn", "kernel_size": 100_001}, "kernel_size"),
        ({"dataset": "adding", "loss": "mse", "model": "lstm", "seq_len": 10**9}, "seq_len"),
        ({"model": "cnn", "depth": 10**12}, "depth"),
        ({"width": 10**300}, "width"),
    ],
)
def test_a_config_beyond_memory_is_refused_naming_the_field_the_estimate_and_the_limit(
    fields: dict, blamed: str
) -> None:
    cfg = RunConfig(**fields)
    limit, _ = memory_limit()
    assert estimate(cfg).total > limit  # the estimate itself, by an independent comparison
    with pytest.raises(ConfigError) as caught:
        check_fits(cfg)
    assert caught.value.field == blamed and len(str(caught.value).splitlines()) == 1
    assert "GiB" in caught.value.allowed and "the limit is" in caught.value.allowed


def test_the_defaults_and_the_shipped_sizes_fit() -> None:
    check_fits(RunConfig())
    check_fits(RunConfig(dataset="cifar10", data_dir="data", model="cnn", width=64, depth=8))
