"""Names the test modules import (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RunJax = Callable[..., tuple[pytest.RunResult, dict[str, Any]]]

# Plugins that a development machine may have and these sessions do not use: off, so that
# each child session starts in about half the time (no-ops where they are not installed).
UNRELATED_PLUGINS = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:jaxtyping")


def entries(cache_dir: Path) -> list[Path]:
    """The entry files of a pytest-jaxcache store."""
    folder = cache_dir / "entries"
    return sorted(folder.iterdir()) if folder.is_dir() else []
