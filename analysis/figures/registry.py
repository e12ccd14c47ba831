"""The figure registry: a report figure is one function decorated with `@figure(...)`, stating all there is to it.

Its title and caption (the report prints them beside it), what it needs to say anything (`Needs`: which
runs, which records, what must vary), and whether it takes the study's objective. The report draws the
figures in the order of `entries()`: by theme (THEMES, each a module of analysis/figures), then in order
of definition inside a theme.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from analysis import summary
from analysis.figures.style import plural, styled
from analysis.summary import RECURRENT, arch

Draw = Callable[..., Figure | None]


@dataclass(frozen=True)
class Needs:
    """What a figure needs to say anything: runs of a kind (`task`) whose data it draws, and dimensions that vary."""

    data: str  # the records it draws, named for the report's "Not drawn" list when a study lacks them
    task: str = "any"  # a key of TASKS: which runs the figure is about
    vary: tuple[str, ...] = ()  # at least one of these (config columns or keys of DERIVED) takes ≥ 2 values


@dataclass(frozen=True)
class FigureEntry:
    """One report figure: its name, the drawing function and everything the report says about it."""

    name: str
    title: str
    caption: str  # HTML; "{rule}" stands for the training-outcome rule
    needs: Needs
    takes_objective: bool  # called with objective= and direction= (the study's objective)
    draw: Draw
    theme: str  # the module of analysis/figures it lives in


# The theme modules, in the report's order; a figure in a module not listed here is refused when registered.
THEMES = ("gains", "phase", "units", "training", "recurrent", "losses", "gan")
_REGISTERED: dict[str, FigureEntry] = {}

TASKS: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "any": ("", lambda runs: pd.Series(True, index=runs.index)),
    "non-recurrent": ("non-recurrent", lambda runs: ~runs["model"].isin(RECURRENT)),
    "supervised": (
        "supervised feed-forward (not recurrent, not GAN)",
        lambda runs: ~runs["model"].isin(RECURRENT) & ~runs["loss"].isin(summary.GAN_LOSSES),
    ),
    "recurrent": (f"recurrent ({', '.join(RECURRENT)})", lambda runs: runs["model"].isin(RECURRENT)),
    "gan": ("GAN (loss gan_saturating or gan_nonsaturating)", lambda runs: runs["loss"].isin(summary.GAN_LOSSES)),
}
# Dimensions that are not one config column: name → the value of a run (themes add theirs with @dimension).
DERIVED: dict[str, Callable[[dict], object]] = {"architecture": arch}


def dimension(name: str) -> Callable[[Callable[[dict], object]], Callable[[dict], object]]:
    """Register a function of a run as a dimension a figure's Needs.vary can name."""

    def register(fn: Callable[[dict], object]) -> Callable[[dict], object]:
        DERIVED[name] = fn
        return fn

    return register


def figure(
    *, title: str, caption: str, needs: Needs, takes_objective: bool = False, name: str | None = None
) -> Callable[[Draw], Draw]:
    """Register a figure function (runs, stats) → Figure | None under `name` (default: the function's name).

    The registered function gets complete `runs` (every config column and the per-run summary columns,
    computed unless the caller annotated the runs already) and draws in the reports' seaborn style.
    """

    def register(fn: Draw) -> Draw:
        key, theme = name or fn.__name__, fn.__module__.rsplit(".", 1)[-1]
        if key in _REGISTERED:
            raise ValueError(f"figure {key!r} is registered twice")
        if needs.task not in TASKS:
            raise ValueError(f"figure {key!r}: needs.task={needs.task!r}; allowed: {', '.join(TASKS)}")
        if theme not in THEMES:
            raise ValueError(f"figure {key!r} is defined in {fn.__module__}; allowed: a module of THEMES")

        @functools.wraps(fn)
        @styled
        def draw(runs: pd.DataFrame, stats: pd.DataFrame, *args, **kwargs) -> Figure | None:
            return fn(summary.annotate(summary.ensure_columns(runs), stats), stats, *args, **kwargs)

        _REGISTERED[key] = FigureEntry(key, title, caption, needs, takes_objective, draw, theme)
        return draw

    return register


def entries() -> dict[str, FigureEntry]:
    """Every registered figure by name, in the report's order: by THEMES, then as defined inside a theme."""
    return dict(sorted(_REGISTERED.items(), key=lambda item: THEMES.index(item[1].theme)))


def _values(runs: pd.DataFrame, dimension: str) -> set[str]:
    """The distinct values of a config column or DERIVED dimension among `runs` (missing ones left out)."""
    if dimension in DERIVED:
        return {str(DERIVED[dimension](run)) for run in runs.to_dict("records")}
    return {str(v) for v in runs[dimension].dropna()} if dimension in runs else set()


def lacks(needs: Needs) -> str:
    """The reason a figure is not drawn when the study holds none of the records it draws."""
    kind = TASKS[needs.task][0]
    return f"this study has no {kind + ' ' if kind else ''}{needs.data}"


def unmet(needs: Needs, runs: pd.DataFrame) -> str | None:
    """Why a figure with these needs cannot say anything about `runs` (one sentence), or None when it can."""
    runs = summary.ensure_columns(runs)
    kind, belongs = TASKS[needs.task]
    chosen = runs[belongs(runs)]
    if chosen.empty:
        return lacks(needs)
    if needs.vary and all(len(_values(chosen, d)) < 2 for d in needs.vary):
        fixed = ", ".join(f"{d} = {', '.join(sorted(_values(chosen, d))) or 'unset'}" for d in needs.vary)
        counted = plural(len(chosen), f"{kind} run" if kind else "run")
        return f"it compares {' or '.join(needs.vary)}, which this study's {counted} do not vary ({fixed})"
    return None
