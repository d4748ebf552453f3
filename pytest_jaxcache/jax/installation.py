"""What the installation into JAX changed in one process, and how to undo it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_jaxcache.environment import InstallFacts
from pytest_jaxcache.stats import LoweringStats

OUR_STORE = "pytest-jaxcache store"
JAX_STORE = "JAX's file store"
NO_STORE = "none"


@dataclass
class Installation:
    """The steps :func:`pytest_jaxcache.jax.install.install` took, their notices, and
    the undo of each, run in reverse order by :meth:`uninstall`."""

    store_kind: str
    notices: list[str] = field(default_factory=list)
    jax_version: str | None = None
    jaxlib_version: str | None = None
    # Called once, inside the first compile or lowering that reaches our store (a backend
    # exists by then): it binds the store to this machine's namespace.
    on_first_use: Callable[[], None] | None = None
    lowering: LoweringStats | None = None  # the lowering tier's figures, when it runs
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        return self.store_kind == OUR_STORE

    @property
    def facts(self) -> InstallFacts:
        return InstallFacts(self.store_kind, self.jax_version, self.jaxlib_version)

    def first_use(self) -> None:
        """Run :attr:`on_first_use` once. The lowering tier reaches the store before the
        first compile does (a program is lowered, then compiled), so both call this."""
        hook, self.on_first_use = self.on_first_use, None
        if hook is not None:
            hook()

    def add_undo(self, what: str, undo: Callable[[], None]) -> None:
        """``undo`` runs at :meth:`uninstall`, after everything added later."""
        self._undo.append((what, undo))

    def patch(self, owner: Any, name: str, value: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, value)
        self.add_undo(
            f"restore {getattr(owner, '__name__', owner)}.{name}",
            lambda: setattr(owner, name, original),
        )

    def uninstall(self) -> None:
        """Undo every step. An undo that fails is said on stderr (the report is written
        by now) and the others still run: the process is being torn down."""
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as error:  # said, never raised into pytest's teardown
                sys.stderr.write(
                    f"pytest-jaxcache: could not {what}: {type(error).__name__}: {error}\n"
                )
