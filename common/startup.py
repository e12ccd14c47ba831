"""Process start and exit of the entry points: keep CPython's cyclic GC off what the big imports build.

Importing torch, Lightning and MLflow makes millions of long-lived objects. With the cyclic GC on, the
imports trigger collections that scan them again and again (about 1 s of a 5 s start on a 2-core
machine), and at exit the interpreter's last collections scan them once more (about 1.3 s).
`gc.freeze()` moves every live object to the permanent generation, which collections skip; objects
made later (each step, each trial) are collected as usual.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def imports_without_gc(fresh: bool = True) -> Iterator[None]:
    """Run the block's imports with the cyclic GC off, then freeze what they built; no-op if not `fresh`."""
    if not fresh:  # already imported (a test calling an entry point): leave its process alone
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def prepare_exit() -> None:
    """Freeze every live object so that the interpreter's final collections skip them (a faster exit).

    Call it last in a process's main path: objects still alive then are only torn down, not collected.
    """
    gc.freeze()
