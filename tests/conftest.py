"""Shared fixtures. Child sessions start through :mod:`helpers` only; this file gives
them a directory (``pytester.path``) and a short name."""

from __future__ import annotations

import pytest
from helpers import RunJax, Session, run_session


@pytest.fixture
def run_jax(pytester: pytest.Pytester) -> RunJax:
    """``run_jax(*args)``: a child pytest session in ``pytester.path``, with a JSON
    report; unpacks as ``result, report``."""

    def run(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> Session:
        return run_session(pytester.path, *args, timeout=timeout, env=env)

    return run
