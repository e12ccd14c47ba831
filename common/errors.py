"""The error of a bad input value: one line naming the field, the value and what is allowed (exit code 2)."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value that is not allowed: names the field, the value and what is allowed."""

    def __init__(self, field_name: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field_name, value, allowed
        shown = field_name if str(field_name).isidentifier() else repr(field_name)  # a stray name stays one line
        super().__init__(f"{shown}={value!r} is not allowed; allowed: {allowed}")
