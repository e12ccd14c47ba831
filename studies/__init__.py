"""Study specs (YAML, in specs/), their validation and the one generic Optuna runner.

Only light names live here: `python -m studies.run` needs them before it imports torch and Lightning,
so that its extra worker processes start importing at once (studies.workers).
"""

from pathlib import Path

SPEC_DIR = Path(__file__).resolve().parent / "specs"
DEFAULT_STORAGE = "optuna.journal"  # a journal file: several local worker processes share it without locks failing


def list_specs() -> list[str]:
    """Names of the shipped specs."""
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))
