"""Study specs: YAML files that declare a sweep as data, validated before anything runs.

A spec has a `name`, `fixed` run-config fields, a search `space`, a `sampler`, a `pruner`, an
`objective` and `n_trials` (see the README's 'Studies' and docs/studies.md). A parameter of the space is one of
    [a, b, c]                                   categorical shorthand
    {choices: [a, b, c]}                        categorical
    {int: [low, high], log: false, step: 1}     integer range
    {float: [low, high], log: true}             float range
    {bundles: {name: {field: value, …}, …}}     named sets of fields chosen together (e.g. model+norm)
A parameter named like a run-config field sets that field; a bundle parameter may have any other name.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from common.names import STUDY_NAME_RULE, valid_study_name
from gradprobe.keys import TRAIN_LOSS, VAL_ACC, VAL_DICE, VAL_HIGH_QUALITY, VAL_IOU, VAL_KNN_ACC, VAL_LOSS, VAL_MODES
from pipelines.config import ConfigError, RunConfig, field_names
from pipelines.data import unreadable
from pipelines.memory import check_fits
from studies import SPEC_DIR, list_specs  # list_specs: also imported from here

TOP_LEVEL = ("name", "description", "fixed", "space", "sampler", "pruner", "objective", "n_trials", "retries")
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "percentile", "hyperband")
OBJECTIVE_METRICS = (VAL_ACC, VAL_LOSS, TRAIN_LOSS, VAL_MODES, VAL_HIGH_QUALITY, VAL_DICE, VAL_IOU, VAL_KNN_ACC)
# Objective metrics only some tasks record (models/metrics.py); larger is better for each.
TASK_METRICS = {
    VAL_ACC: ("classification", "binary"),
    VAL_DICE: ("segmentation",),
    VAL_IOU: ("segmentation",),
    VAL_KNN_ACC: ("metric",),
    VAL_MODES: ("adversarial",),
    VAL_HIGH_QUALITY: ("adversarial",),
}
GRID_CHECK_LIMIT = 20_000  # grids up to this size are validated point by point
YAML_NODE_LIMIT = 100_000  # nodes of a spec with its aliases expanded: far beyond any real spec, far below a bomb
# The arguments each Optuna pruner takes: (lowest integer, or "percent" for a number in [0, 100]). Optuna checks
# few of them when the pruner is made, so a wrong type would only fail at the first report, mid-study.
_COUNTS = {"n_startup_trials": 0, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1}
PRUNER_ARGS: dict[str, dict[str, Any]] = {
    "none": {},
    "median": _COUNTS,
    "percentile": {"percentile": "percent", **_COUNTS},
    "hyperband": {"min_resource": 1, "max_resource": 1, "reduction_factor": 2, "bootstrap_count": 0},
}


class SpecError(ValueError):
    """A spec problem: names the spec file, the field and the problem, on one line."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        where = where if where.isprintable() else repr(where)[1:-1]  # a key with control characters: escaped
        problem = " ".join(problem.split())  # one line, whatever an exception's text holds
        self.source, self.where, self.problem = source, where, problem
        super().__init__(f"{source}: {where}: {problem}")


@dataclass(frozen=True)
class Param:
    """One dimension of the search space."""

    name: str
    kind: str  # categorical, int, float, bundle
    choices: tuple[Any, ...] = ()
    low: float = 0
    high: float = 0
    log: bool = False
    step: int | None = None
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The run-config fields this parameter sets for `trial`."""
        if self.kind == "categorical":
            return {self.name: trial.suggest_categorical(self.name, list(self.choices))}
        if self.kind == "bundle":
            return dict(self.bundles[trial.suggest_categorical(self.name, list(self.bundles))])
        if self.kind == "int":
            return {
                self.name: trial.suggest_int(
                    self.name, int(self.low), int(self.high), step=self.step or 1, log=self.log
                )
            }
        return {self.name: trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)}

    def grid_values(self) -> list[Any]:
        """The values a grid sampler walks through (categorical and bundle parameters only)."""
        return list(self.bundles) if self.kind == "bundle" else list(self.choices)

    def expand(self, value: Any) -> dict[str, Any]:
        """Run-config fields for one sampled value."""
        return dict(self.bundles[value]) if self.kind == "bundle" else {self.name: value}


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec."""

    name: str
    source: str
    description: str
    fixed: dict[str, Any]
    space: tuple[Param, ...]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    metric: str
    direction: str
    n_trials: int
    retries: int = 0

    def config(self, values: dict[str, Any]) -> RunConfig:
        """The run config of one trial: fixed fields, then the sampled ones."""
        return RunConfig.from_dict({**self.fixed, **values})

    def missing_data(self) -> str | None:
        """Why a file-based dataset the study can use is absent from its data_dir (checked before anything runs)."""
        sampled = [p.expand(v) for p in self.space for v in p.grid_values()]
        configs = [self.config({})] + [self.config(f) for f in sampled if "dataset" in f or "data_dir" in f]
        for cfg in configs:
            problem = unreadable(cfg.dataset, cfg.data_dir, cfg.seq_len)
            if problem:
                return f"dataset {cfg.dataset!r} in data_dir {cfg.data_dir!r}: {problem}"
        return None

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space."""
        return {p.name: p.grid_values() for p in self.space}

    def make_sampler(self, worker: int = 0) -> optuna.samplers.BaseSampler:
        """Optuna's sampler, seeded per worker (but with one grid order) so parallel workers do not propose alike."""
        kind = self.sampler["type"]
        # GridSampler's seed shuffles the grid, and it tracks points by their index in that order: every worker
        # must share one order, or the same index names different points and workers skip or repeat points.
        seed = self.sampler.get("seed", 0) + (0 if kind == "grid" else worker)
        if kind == "grid":
            return optuna.samplers.GridSampler(self.grid(), seed=seed)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.sampler.get("n_startup_trials", 10))

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """Optuna's pruner, acting on the objective's values reported at each validation."""
        kind, opts = self.pruner["type"], {k: v for k, v in self.pruner.items() if k != "type"}
        if kind == "none":
            return optuna.pruners.NopPruner()
        if kind == "median":
            return optuna.pruners.MedianPruner(**opts)
        if kind == "percentile":
            return optuna.pruners.PercentilePruner(**opts)
        return optuna.pruners.HyperbandPruner(**opts)


def _param(source: str, name: str, raw: Any) -> Param:
    """One parameter of the space: a list of choices, or a mapping of choices, bundles, an int or a float range."""
    where = f"space.{name}"
    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        raise SpecError(source, where, f"expected a list of choices or a mapping, got {raw!r}")
    if "choices" in raw:
        if not isinstance(raw["choices"], list) or not raw["choices"]:
            raise SpecError(source, where, f"choices must be a non-empty list, got {raw['choices']!r}")
        return Param(name, "categorical", choices=tuple(raw["choices"]))
    if "bundles" in raw:
        return _bundles(source, name, raw["bundles"])
    for kind in ("int", "float"):
        if kind in raw:
            return _range(source, name, kind, raw)
    raise SpecError(source, where, f"unknown parameter form {sorted(raw)}; use choices, int, float or bundles")


def _bundles(source: str, name: str, bundles: Any) -> Param:
    """A bundle parameter: each choice a named mapping of run-config fields."""
    where = f"space.{name}"
    if not isinstance(bundles, dict) or not bundles:
        raise SpecError(source, where, "bundles must be a non-empty mapping of name -> {field: value}")
    for label, values in bundles.items():
        if not isinstance(values, dict):
            raise SpecError(source, f"{where}.{label}", f"expected a mapping of run-config fields, got {values!r}")
        for key in values:
            if key not in field_names():
                raise SpecError(
                    source, f"{where}.{label}.{key}", f"unknown run-config field; allowed: {', '.join(field_names())}"
                )
    return Param(name, "bundle", bundles={str(k): v for k, v in bundles.items()})


def _range(source: str, name: str, kind: str, raw: dict[str, Any]) -> Param:
    """An int or float range parameter: [low, high], optionally log-scaled or stepped (not both)."""
    where, bounds = f"space.{name}", raw[kind]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)):
        raise SpecError(source, where, f"{kind} needs [low, high], got {bounds!r}")
    low, high = bounds
    log, step = raw.get("log", False), raw.get("step")
    if not isinstance(log, bool):
        raise SpecError(source, where, f"log must be true or false, got {log!r}")
    number = int if kind == "int" else (int, float)
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or not step > 0 or log):
        raise SpecError(
            source, where, f"step={step!r}; allowed: a{'n integer' if kind == 'int' else ' number'} > 0, without log"
        )
    if low > high:
        raise SpecError(source, where, f"low={low} > high={high}")
    if log and low <= 0:
        raise SpecError(source, where, f"a log range needs low > 0, got low={low}")
    unknown = set(raw) - {kind, "log", "step"}
    if unknown:
        raise SpecError(source, where, f"unknown keys {sorted(unknown)}; allowed: {kind}, log, step")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _check_configs(spec: StudySpec) -> None:
    """Every value the space can produce must make a valid run config together with `fixed`."""
    for p in spec.space:
        if p.kind not in ("bundle",) and p.name not in field_names():
            raise SpecError(
                spec.source,
                f"space.{p.name}",
                f"not a run-config field (allowed: {', '.join(field_names())}); use bundles for grouped values",
            )
    try:
        check_fits(spec.config({}))
    except ConfigError as exc:
        raise SpecError(spec.source, f"fixed.{exc.field}", str(exc)) from None
    discrete = [p for p in spec.space if p.kind in ("categorical", "bundle")]
    ranges = [p for p in spec.space if p.kind in ("int", "float")]
    range_points = [[p.expand(p.low), p.expand(p.high)] for p in ranges]
    size = math.prod(len(p.grid_values()) for p in discrete) * 2 ** len(ranges)
    if size <= GRID_CHECK_LIMIT:
        _check_every_combination(spec, discrete, range_points)
    else:  # too many to enumerate: each value against the fixed fields alone
        _check_each_value(spec, discrete, range_points)


def _check_every_combination(spec: StudySpec, discrete: list[Param], range_points: list[list[dict[str, Any]]]) -> None:
    """Every combination of the discrete values and the ranges' ends makes a valid run config."""
    axes = [[(p, v) for v in p.grid_values()] for p in discrete]
    for combo in itertools.product(*axes, *range_points):
        values: dict[str, Any] = {}
        for item in combo:
            values.update(item[0].expand(item[1]) if isinstance(item, tuple) else item)
        _try(spec, values, combo)


def _check_each_value(spec: StudySpec, discrete: list[Param], range_points: list[list[dict[str, Any]]]) -> None:
    """Each discrete value and each range end, alone with the fixed fields, makes a valid run config."""
    for p in discrete:
        for v in p.grid_values():
            _try(spec, p.expand(v), ((p, v),))
    for pts in range_points:
        for values in pts:
            _try(spec, values, ())


def _try(spec: StudySpec, values: dict[str, Any], combo: tuple) -> None:
    try:
        check_fits(spec.config(values))  # a value the machine cannot hold is refused like an invalid one
    except ConfigError as exc:
        named = f"fixed.{exc.field}" if exc.field in spec.fixed and exc.field not in values else f"space.{exc.field}"
        where = next(
            (
                f"space.{item[0].name}"
                for item in combo
                if isinstance(item, tuple) and exc.field in item[0].expand(item[1])
            ),
            named,
        )
        shown = {k: v for k, v in values.items()}
        raise SpecError(spec.source, where, f"{exc} (with {shown})") from None


def _check_pruner_args(source: str, pruner: dict[str, Any]) -> None:
    """Each pruner argument is one the pruner takes, of its type and range (hyperband's max_resource may be 'auto')."""
    allowed = PRUNER_ARGS[pruner["type"]]
    for key, value in pruner.items():
        if key == "type":
            continue
        if key not in allowed:
            names = ", ".join(["type", *allowed])
            raise SpecError(
                source, f"pruner.{key}", f"not an argument of the {pruner['type']} pruner; allowed: {names}"
            )
        low = allowed[key]
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if low == "percent":
            if not (number and 0 <= value <= 100):
                raise SpecError(source, f"pruner.{key}", f"{value!r}; allowed: a number in [0, 100]")
        elif not (value == "auto" and key == "max_resource") and not (
            number and isinstance(value, int) and value >= low
        ):
            auto = " or 'auto'" if key == "max_resource" else ""
            raise SpecError(source, f"pruner.{key}", f"{value!r}; allowed: an integer ≥ {low}{auto}")


def _check_top_level(raw: Any, source: str) -> None:
    """A mapping of known fields, with a name, a space and an objective; the name is a valid study name."""
    if not isinstance(raw, dict):
        raise SpecError(source, "(top level)", "a spec is a YAML mapping")
    for key in raw:
        if key not in TOP_LEVEL:
            raise SpecError(source, str(key), f"unknown field; allowed: {', '.join(TOP_LEVEL)}")
    for key in ("name", "space", "objective"):
        if key not in raw:
            raise SpecError(source, key, "missing")
    if not valid_study_name(raw["name"]):
        raise SpecError(source, "name", f"{raw['name']!r}; allowed: {STUDY_NAME_RULE}")


def _fixed(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The fixed run-config fields (a mapping of known field names)."""
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpecError(source, "fixed", "expected a mapping of run-config fields")
    for key in fixed:
        if key not in field_names():
            raise SpecError(source, f"fixed.{key}", f"unknown run-config field; allowed: {', '.join(field_names())}")
    return dict(fixed)


def _space(raw: dict[str, Any], source: str) -> tuple[Param, ...]:
    """The search space: a non-empty mapping of parameters."""
    space_raw = raw["space"]
    if not isinstance(space_raw, dict) or not space_raw:
        raise SpecError(source, "space", "expected a non-empty mapping of parameters")
    return tuple(_param(source, str(name), value) for name, value in space_raw.items())


def _named(raw: dict[str, Any], source: str, field: str, default: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The sampler or pruner: a name or a mapping with an allowed `type`."""
    value = raw.get(field) or {"type": default}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise SpecError(source, field, f"expected a {field} name or a mapping, got {value!r}")
    if value.get("type") not in allowed:
        raise SpecError(source, f"{field}.type", f"{value.get('type')!r}; allowed: {', '.join(allowed)}")
    return dict(value)


def _objective(raw: dict[str, Any], source: str) -> tuple[str, str]:
    """(metric, direction) of the objective; the direction defaults to the metric's natural one."""
    objective = raw["objective"]
    if not isinstance(objective, dict) or objective.get("metric") not in OBJECTIVE_METRICS:
        raise SpecError(
            source,
            "objective.metric",
            f"{objective.get('metric') if isinstance(objective, dict) else objective!r}; "
            f"allowed: {', '.join(OBJECTIVE_METRICS)}",
        )
    maximized = objective["metric"] in TASK_METRICS
    direction = objective.get("direction", "maximize" if maximized else "minimize")
    if direction not in ("minimize", "maximize"):
        raise SpecError(source, "objective.direction", f"{direction!r}; allowed: minimize, maximize")
    if set(objective) - {"metric", "direction"}:
        raise SpecError(
            source,
            "objective",
            f"unknown keys {sorted(map(str, set(objective) - {'metric', 'direction'}))}; allowed: metric, direction",
        )
    return objective["metric"], direction


def _check_sampler_options(sampler: dict[str, Any], space: tuple[Param, ...], source: str) -> None:
    """The sampler's options are known integers in range; a grid sweeps no range."""
    if set(sampler) - {"type", "seed", "n_startup_trials"}:
        raise SpecError(
            source,
            "sampler",
            f"unknown keys {sorted(map(str, set(sampler) - {'type', 'seed', 'n_startup_trials'}))}; "
            "allowed: type, seed, n_startup_trials",
        )
    for key, top in (("seed", 2**31), ("n_startup_trials", math.inf)):  # numpy takes seeds below 2**32, one per worker
        value = sampler.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < top:
            raise SpecError(
                source,
                f"sampler.{key}",
                f"{value!r}; allowed: an integer ≥ 0" + (" and < 2**31" if key == "seed" else ""),
            )
    ranged = [p.name for p in space if p.kind in ("int", "float")]
    if sampler["type"] == "grid" and ranged:
        raise SpecError(source, f"space.{ranged[0]}", "a grid sampler needs choices or bundles, not ranges")


def _counts(raw: dict[str, Any], source: str, sampler: dict[str, Any], space: tuple[Param, ...]) -> tuple[int, int]:
    """(n_trials, retries): n_trials defaults to the grid's size for a grid only."""
    n_trials = raw.get("n_trials")
    if n_trials is None:
        if sampler["type"] != "grid":
            raise SpecError(source, "n_trials", "missing (only a grid may leave it out: it is the grid size)")
        n_trials = math.prod(len(p.grid_values()) for p in space)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise SpecError(source, "n_trials", f"{n_trials!r}; allowed: an integer ≥ 1")
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SpecError(source, "retries", f"{retries!r}; allowed: an integer ≥ 0")
    return n_trials, retries


def _check_runnable(spec: StudySpec) -> None:
    """Every run config of the space is valid, the objective's metric fits the task, Optuna takes the pruner."""
    _check_configs(spec)
    task = spec.config({}).task
    if spec.metric in TASK_METRICS and task not in TASK_METRICS[spec.metric]:
        raise SpecError(
            spec.source,
            "objective.metric",
            f"{spec.metric} needs a {' or '.join(TASK_METRICS[spec.metric])} dataset, "
            f"not {spec.config({}).dataset!r} ({task})",
        )
    try:
        spec.make_pruner()
    except (TypeError, ValueError) as exc:  # Optuna's own checks of the pruner's arguments
        raise SpecError(spec.source, "pruner", str(exc)) from None


def parse_spec(raw: Any, source: str) -> StudySpec:
    """Validate a spec mapping and build the StudySpec (SpecError on the first problem)."""
    _check_top_level(raw, source)
    fixed = _fixed(raw, source)
    space = _space(raw, source)
    sampler = _named(raw, source, "sampler", "tpe", SAMPLERS)
    pruner = _named(raw, source, "pruner", "none", PRUNERS)
    _check_pruner_args(source, pruner)
    metric, direction = _objective(raw, source)
    _check_sampler_options(sampler, space, source)
    n_trials, retries = _counts(raw, source, sampler, space)
    spec = StudySpec(
        name=str(raw["name"]),
        source=source,
        description=str(raw.get("description", "")).strip(),
        fixed=fixed,
        space=space,
        sampler=sampler,
        pruner=pruner,
        metric=metric,
        direction=direction,
        n_trials=n_trials,
        retries=retries,
    )
    _check_runnable(spec)
    return spec


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-4 as a string; resolve exponent floats without a dot as floats too.

    A document whose aliases expand beyond YAML_NODE_LIMIT nodes (an alias bomb) or into themselves is
    refused before any Python object is built: validating or printing it would take exponential time.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    """Raise a YAMLError if `root`, aliases expanded, has more than YAML_NODE_LIMIT nodes or a cycle."""
    sizes: dict[int, int] = {}  # node id -> expanded size; an alias repeats a node object, so this is linear
    busy: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in busy:
            raise yaml.YAMLError(
                f"a recursive alias (line {node.start_mark.line + 1}); allowed: aliases of finished nodes"
            )
        busy.add(id(node))
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else [n for kv in node.value for n in kv]
            if isinstance(node, yaml.MappingNode)
            else []
        )
        total = 1
        for child in children:
            total += size(child)
            if total > YAML_NODE_LIMIT:
                raise yaml.YAMLError(
                    f"the document expands to more than {YAML_NODE_LIMIT} nodes (aliases included); "
                    "allowed: a spec of that size at most"
                )
        busy.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def spec_path(name_or_path: str) -> Path:
    """A shipped spec's file (by name) or the given YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return SPEC_DIR / f"{name_or_path}.yaml"


def load_spec(name_or_path: str, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a spec by shipped name or path, with `overrides` replacing fixed fields."""
    path = spec_path(name_or_path)
    if not path.exists():
        raise SpecError(str(path), "spec", f"no such file; shipped specs: {', '.join(list_specs())}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # a SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:  # also: not UTF-8 text, a folder
        raise SpecError(str(path), "yaml", " ".join(str(exc).split())) from None
    if overrides and isinstance(raw, dict) and isinstance(raw.get("fixed") or {}, dict):
        raw["fixed"] = {**(raw.get("fixed") or {}), **overrides}
    return parse_spec(raw, str(path))


def parse_overrides(items: list[str], source: str = "--set") -> dict[str, Any]:
    """`field=value` strings (YAML-typed values) into a dict of fixed-field overrides."""
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SpecError(source, item or repr(item), "expected field=value")
        try:
            overrides[name.strip()] = yaml.load(value, Loader=_Loader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise SpecError(source, item, f"the value is not YAML: {exc}") from None
    return overrides
