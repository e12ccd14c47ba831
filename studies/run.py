"""Run or resume a study: `python -m studies.run --spec default` (MLproject entry point `study`).

mlflow run . -e study --env-manager local                       # the default spec
mlflow run . -e study -P spec=vanishing -P workers=2 --env-manager local
PGPASSWORD=… python -m studies.run --spec studies/specs/recurrent.yaml --storage postgresql://user@host/db
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from common.cli import OneLineParser
from common.startup import imports_without_gc, prepare_exit
from studies import DEFAULT_STORAGE, list_specs
from studies.workers import WarmWorkers


def make_parser() -> argparse.ArgumentParser:
    """Flags mirroring the MLproject `study` parameters."""
    parser = OneLineParser(
        prog="python -m studies.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="default", help=f"a shipped spec ({', '.join(list_specs())}) or a YAML path")
    parser.add_argument("--n-trials", type=int, default=0, help="the study's total trials (0: the spec's n_trials)")
    parser.add_argument("--study-name", default="", help="Optuna study name (default: the spec's name)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage: a journal file path or an RDB URL")
    parser.add_argument("--workers", type=int, default=0, help="worker processes on this machine (0: one per CPU core)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a fixed run-config field of the spec (repeatable), e.g. --set max_steps=20",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="no set-up messages: warnings, errors and results only")
    verbosity.add_argument("--verbose", action="store_true", help="also Optuna's line per trial and debug messages")
    return parser


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Lab and MLflow set-up messages at INFO, or WARNING with --quiet; Optuna's per-trial lines with --verbose.

    Optuna's INFO lines (one per trial) would tear the study's progress bar, which already shows the count and best.
    """
    import optuna

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    for name in ("studies", "pipelines", "analysis"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("mlflow").setLevel(max(level, logging.INFO))
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the spec and arguments (exit 2 on a problem), then run the study."""
    args = make_parser().parse_args(argv)
    problem = _bad_counts(args)
    if problem:  # before any worker is spawned: `--workers 100000` must not start 99,999 processes
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # The extra workers start importing torch and Lightning now, while this process does the same and
    # validates; a caller that has imported them already (a test) has no import to overlap.
    warm = WarmWorkers(max(0, (args.workers or os.cpu_count() or 1) - 1)) if "torch" not in sys.modules else None
    try:
        return _main(args, warm)
    finally:
        if warm is not None:
            warm.join()  # a worker that got no job (bad input) is stopped; it wrote nothing


def max_workers() -> int:
    """The most worker processes a study may start here: two per CPU core (more only queue for the cores)."""
    return 2 * (os.cpu_count() or 1)


def _bad_counts(args: argparse.Namespace) -> str | None:
    """The one-line problem with --workers or --n-trials, or None."""
    if not 0 <= args.workers <= max_workers():
        return (
            f"workers={args.workers!r} is not allowed; allowed: an integer in [0, {max_workers()}] (two per CPU core)"
        )
    if args.n_trials < 0:
        return f"n_trials={args.n_trials!r} is not allowed; allowed: an integer ≥ 0"
    return None


def _main(args: argparse.Namespace, warm: WarmWorkers | None) -> int:
    # Imported here, not at the top: torch and Lightning take seconds, which the warm workers overlap.
    with imports_without_gc(fresh="studies.runner" not in sys.modules):
        from common.errors import ConfigError
        from common.preflight import check_tracking, sigterm_interrupts
        from studies.runner import AfterTrialsError, run_study
        from studies.spec import STUDY_NAME_RULE, SpecError, load_spec, parse_overrides, valid_study_name
    setup_logging(args.quiet, args.verbose)

    try:
        overrides = parse_overrides(args.set)
        spec = load_spec(args.spec, overrides)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = spec.missing_data()
    if missing:  # before the study, its parent run or any storage is made
        print(f"error: {missing}", file=sys.stderr)
        return 2
    if args.study_name and not valid_study_name(args.study_name):
        print(f"error: study_name={args.study_name!r} is not allowed; allowed: {STUDY_NAME_RULE}", file=sys.stderr)
        return 2
    try:
        check_tracking()  # an unreachable or corrupt store: one line within seconds, before the study exists
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with sigterm_interrupts():  # SIGTERM ends the study as Ctrl-C does: trials KILLED, resumable
            run_study(
                spec.source,
                n_trials=args.n_trials or None,
                study_name=args.study_name or None,
                storage=args.storage,
                workers=args.workers,
                report=not args.no_report,
                overrides=overrides,
                warm=warm,
            )
    except KeyboardInterrupt:
        return 130
    except AfterTrialsError as exc:  # the run says why (tag failure); one line here, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    prepare_exit()
    sys.exit(code)
