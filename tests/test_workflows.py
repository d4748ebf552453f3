"""The project's GitHub Actions workflow: valid (actionlint, with its expression and
action-input checks), and its examples job is exactly what the README documents."""

from __future__ import annotations

import re
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import PROJECT, run_command

WORKFLOW = PROJECT / ".github" / "workflows" / "ci.yml"


def actionlint() -> str:
    """The actionlint the test extra installed for this interpreter (its scripts'
    directory need not be on ``PATH``)."""
    path = shutil.which("actionlint", path=sysconfig.get_path("scripts"))
    assert path is not None, "actionlint is missing: pip install -e '.[test]'"
    return path


def test_the_workflows_pass_actionlint(tmp_path: Path) -> None:
    workflows = sorted((PROJECT / ".github" / "workflows").glob("*.yml"))
    assert workflows == [WORKFLOW]
    result = run_command([actionlint(), *workflows], tmp_path)
    assert result.ret == 0, result.outlines + result.errlines


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        (
            "outputs.cache-matched-key",
            "outputs.cache-match-key",
            'property "cache-match-key" is not defined',
        ),
        ("restore-keys: ${{", "restore_keys: ${{", 'input "restore_keys" is not defined'),
    ],
)
def test_actionlint_would_catch_a_slip(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    """The lint is not a formality: a misspelled action output or input fails it."""
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    text = WORKFLOW.read_text()
    assert old in text
    broken.write_text(text.replace(old, new, 1))
    result = run_command([actionlint(), broken], tmp_path)
    assert result.ret == 1
    assert complaint in result.stdout.str()


def readme_workflow() -> list[dict[str, Any]]:
    """The steps the README's "CI with actions/cache" section shows."""
    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("### CI with actions/cache") :]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None
    steps: list[dict[str, Any]] = yaml.safe_load(match.group(1))
    return steps


def test_the_readme_documents_exactly_the_examples_job() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert readme_workflow() == jobs["examples"]["steps"]
    assert jobs["tests"]["steps"][-1] == {"run": "bash .ci/run"}
