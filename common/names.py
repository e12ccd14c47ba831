"""The study-name rule, shared by the study runner (studies/) and the report (analysis/), which may not import studies/.

A study name is the `study` tag in MLflow filter strings and the folder reports/<name>/; a tag read back from
a shared store is data, so the report checks it with the same rule before it builds a path from it.
"""

from __future__ import annotations

import re
from typing import Any

STUDY_NAME_RULE = "letters, digits and _ . - (not first)"


def valid_study_name(name: Any) -> bool:
    """Whether `name` may name a study: it's the study's tag in MLflow filter strings and the folder reports/<name>/."""
    return isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None
