"""What a session pays for the plugin: nothing of ours without a cache but the option
table, no plugin object of a role unless a cache is on, and, with one, only the modules
this process's role needs (the remote tier, key dumps, shards, explaining misses, the
snapshot and maintenance are imported where they are used)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_session, write_files

# The child's conftest writes, at the end of each process (the controller, every worker,
# or the only one), which of our modules it imported and which of our plugin objects
# pytest held.
PROBE = {
    "conftest.py": """
        import json
        import os
        import sys


        def pytest_unconfigure(config):
            worker = getattr(config, "workerinput", {}).get("workerid", "main")
            ours = sorted(name for name in sys.modules if name.startswith("pytest_jaxcache"))
            plugins = sorted(
                name
                for name, plugin in config.pluginmanager.list_name_plugin()
                if plugin is not None and name.startswith("jaxcache")
            )
            with open(os.path.join(config.rootpath, f"probe-{worker}.json"), "w") as out:
                json.dump({"modules": ours, "plugins": plugins}, out)
    """,
    "test_idle.py": """
        import jax


        def test_imports_jax():
            assert jax.__name__ == "jax"
    """,
}

# What no process of a session needs unless it is asked for (or, for explain, unless
# something missed: nothing compiles here).
ON_DEMAND = {
    "pytest_jaxcache.remote",
    "pytest_jaxcache.keydump",
    "pytest_jaxcache.shards",
    "pytest_jaxcache.explain",
    "pytest_jaxcache.timeline",
    "pytest_jaxcache.summary",
    "pytest_jaxcache.cli",
    "pytest_jaxcache.scheduler",
    "pytest_jaxcache.jax.lowering",
    "pytest_jaxcache.jax.lowering_key",
    "pytest_jaxcache.jax.lowering_values",
    "pytest_jaxcache.jax.lowering_internals",
}
# What only the controller, or the only process, needs: the report.
REPORTING = {"pytest_jaxcache.snapshot", "pytest_jaxcache.maintenance", "pytest_jaxcache.terminal"}


def probes(root: Path) -> dict[str, dict[str, Any]]:
    return {
        path.stem.removeprefix("probe-"): json.loads(path.read_text())
        for path in sorted(root.glob("probe-*.json"))
    }


def test_without_a_cache_only_the_option_table_is_imported(pytester: pytest.Pytester) -> None:
    """Beside the plugin module, only xdist's hooks (they group ``jax_errors`` tests and
    offer ``--dist=jaxcache`` with or without a cache); no role's object."""
    write_files(pytester.path, PROBE)
    result, _ = run_session(pytester.path, report=False)
    result.assert_outcomes(passed=1)
    [probe] = probes(pytester.path).values()
    assert probe["plugins"] == ["jaxcache", "jaxcache-dist-choice", "jaxcache-xdist"]
    assert set(probe["modules"]) == {
        "pytest_jaxcache",
        "pytest_jaxcache.error_checks",
        "pytest_jaxcache.hookspecs",
        "pytest_jaxcache.markers",
        "pytest_jaxcache.plugin",
        "pytest_jaxcache.settings",
        "pytest_jaxcache.xdist",
    }


def test_without_the_plugin_nothing_of_ours_is_imported(pytester: pytest.Pytester) -> None:
    write_files(pytester.path, PROBE)
    result, _ = run_session(pytester.path, "-p", "no:jaxcache", "-n", "2", report=False)
    result.assert_outcomes(passed=1)
    found = probes(pytester.path)
    assert set(found) == {"main", "gw0", "gw1"}
    assert all(probe == {"modules": [], "plugins": []} for probe in found.values()), found


def test_each_role_imports_what_it_needs(pytester: pytest.Pytester) -> None:
    write_files(pytester.path, PROBE)
    result, report = run_session(pytester.path, "--jax-cache-dir=cache", "-n", "2")
    result.assert_outcomes(passed=1)
    assert report["cache"]["mode"] == "readwrite"
    found = probes(pytester.path)
    assert set(found) == {"main", "gw0", "gw1"}
    controller = found.pop("main")
    assert "jaxcache-role" in controller["plugins"]
    assert set(controller["modules"]) >= REPORTING
    assert not ON_DEMAND & set(controller["modules"])
    for worker, probe in found.items():
        assert "jaxcache-role" in probe["plugins"], worker
        assert "pytest_jaxcache.session" in probe["modules"], worker
        assert not (ON_DEMAND | REPORTING) & set(probe["modules"]), (worker, probe["modules"])
