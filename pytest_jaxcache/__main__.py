"""``python -m pytest_jaxcache``: the same as the ``jaxcache`` command."""

from __future__ import annotations

import sys

from pytest_jaxcache.cli import main

if __name__ == "__main__":
    sys.exit(main())
