"""What CI uses: the cache key (the same one the plugin's fingerprint gives), the
content digest that says whether a cache changed, and the job summary, rendered by a
real Markdown library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import RunJax, jaxcache_argv, run_command, write_files
from markdown_it import MarkdownIt
from recording import build, compile_

from pytest_jaxcache import cikey, reasons, summary
from pytest_jaxcache.maintenance import MaintenanceResult, Usage
from pytest_jaxcache.reasons import HIT, MISS, NEW, NEW_PROGRAM, Miss
from pytest_jaxcache.recorder import BACKEND_COMPILE_EVENT, REQUEST_EVENT, Recorder
from pytest_jaxcache.terminal import compiled_outside

SUITE = {
    "test_suite.py": """
import os

import jax
import jax.numpy as jnp
import numpy as np


def scaled(v):
    return jnp.sin(v) * 3.0


def test_scaled():
    x = np.ones(int(os.environ.get("SHAPE_N", "3")), np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(scaled)(x)), np.sin(x) * 3.0, rtol=1e-5)
""",
}

FINGERPRINT = {
    "jax": "0.10.2",
    "jaxlib": "0.10.2",
    "jaxlib build": "990e6a0b8413 467",
    "python": "3.11.7",
    "os": "Linux",
    "machine": "x86_64",
    "cpu features": "25fc08b1fed3",
    "XLA_FLAGS": "",
    "backend cpu": "cpu cpu",
}


def html(markdown: str) -> str:
    rendered: str = MarkdownIt("commonmark").enable("table").render(markdown)
    return rendered


# -- keys ----------------------------------------------------------------------------------


def test_key_names_what_makes_entries_unusable_elsewhere() -> None:
    key = cikey.key(FINGERPRINT)
    assert key.startswith("jaxcache-Linux-x86_64-cpu25fc08b1fed3-jax0.10.2-jaxlib0.10.2-")
    assert cikey.restore_keys(FINGERPRINT) == [
        f"{key}-",
        "jaxcache-Linux-x86_64-cpu25fc08b1fed3-jax0.10.2-jaxlib0.10.2-",
    ]
    assert cikey.key(FINGERPRINT, "tests-py311").startswith("tests-py311-Linux-")


@pytest.mark.parametrize(
    "change, crosses",
    [
        ({"jaxlib": "0.10.1"}, False),
        ({"jax": "0.10.1"}, False),
        ({"cpu features": "ffffffffffff"}, False),
        ({"machine": "aarch64"}, False),
        ({"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}, True),
        ({"python": "3.12.1"}, True),
        ({"jaxlib build": "0123456789ab 468"}, True),
    ],
    ids=lambda value: str(value),
)
def test_a_change_changes_the_key_and_falls_back_only_within_a_machine(
    change: dict[str, str], crosses: bool
) -> None:
    """Every change of the fingerprint changes the key; only changes that leave the
    machine and versions as they were may restore the other's cache as a fallback (their
    keys can still hit); another jax, jaxlib, CPU or architecture never restores."""
    other = {**FINGERPRINT, **change}
    assert cikey.key(other) != cikey.key(FINGERPRINT)
    fallback = cikey.restore_keys(other)[-1]
    assert cikey.key(FINGERPRINT).startswith(fallback) is crosses


def key_json(cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_command(jaxcache_argv("key", "--json"), cwd, env=env)
    assert result.ret == 0, result.errlines
    data: dict[str, Any] = json.loads(result.stdout.str())
    return data


def session_fingerprint(cache: Path) -> dict[str, str]:
    [path] = (cache / "fingerprints").iterdir()
    data: dict[str, str] = json.loads(path.read_text())
    return data


def test_jaxcache_key_computes_what_the_plugin_stamps(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """The fingerprint ``jaxcache key`` computes (without compiling) is the one a session
    stamps on its entries, so both give the same key; XLA_FLAGS changes it."""
    write_files(pytester.path, SUITE)
    result, _ = run_jax("--jax-cache-dir=cache", "-p", "no:xdist")
    result.assert_outcomes(passed=1)
    stamped = session_fingerprint(pytester.path / "cache")
    computed = key_json(pytester.path)
    assert computed["fingerprint"] == stamped
    assert computed["key"] == cikey.key(stamped)
    assert computed["restore_keys"] == cikey.restore_keys(stamped)

    flagged = key_json(pytester.path, {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"})
    assert flagged["key"] != computed["key"]
    assert flagged["restore_keys"][-1] == computed["restore_keys"][-1]

    plain = run_command(jaxcache_argv("key"), pytester.path)
    assert plain.outlines == [computed["key"]]
    restore = run_command(jaxcache_argv("key", "--restore-keys", "--prefix", "ci"), pytester.path)
    assert restore.outlines == cikey.restore_keys(stamped, "ci")


def test_github_output_gets_key_and_restore_keys(pytester: pytest.Pytester) -> None:
    """``--github-output`` appends ``key=`` and a multi-line ``restore-keys`` to
    $GITHUB_OUTPUT, after what other steps wrote; without it set, a clear error."""
    output = pytester.path / "github_output"
    output.write_text("earlier=1\n")
    result = run_command(
        jaxcache_argv("key", "--github-output"), pytester.path, env={"GITHUB_OUTPUT": str(output)}
    )
    assert result.ret == 0, result.errlines
    [key] = result.outlines
    lines = output.read_text().splitlines()
    assert lines[:3] == ["earlier=1", f"key={key}", "restore-keys<<EOF_JAXCACHE_RESTORE_KEYS"]
    assert lines[3:] == [f"{key}-", key.rsplit("-", 1)[0] + "-", "EOF_JAXCACHE_RESTORE_KEYS"]

    missing = run_command(jaxcache_argv("key", "--github-output"), pytester.path)
    assert missing.ret == 2 and "GITHUB_OUTPUT is not set" in missing.stderr.str()


# -- has the cache changed? ----------------------------------------------------------------


def digest_of(cache: Path, cwd: Path) -> str:
    result = run_command(jaxcache_argv("digest", str(cache)), cwd)
    assert result.ret == 0, result.errlines
    [value] = result.outlines
    return value


def test_the_digest_changes_with_the_contents_and_only_with_them(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """A cold run changes the cache; a warm run does not (same digest, contents.json
    untouched, 'changed: false'); a run that writes a new program changes it again.
    ``jaxcache digest`` prints the digest the report and contents.json hold."""
    write_files(pytester.path, SUITE)
    cache = pytester.path / "cache"
    result, cold = run_jax("--jax-cache-dir=cache", "-p", "no:xdist")
    result.assert_outcomes(passed=1)
    assert cold["cache"]["changed"] is True
    digest = digest_of(cache, pytester.path)
    assert cold["cache"]["digest"] == digest
    contents = json.loads((cache / "contents.json").read_text())
    assert contents == {"digest": digest, "entries": 1, "bytes": cold["cache"]["after"]["bytes"]}
    recorded = (cache / "contents.json").stat().st_mtime_ns

    result, warm = run_jax("--jax-cache-dir=cache", "-p", "no:xdist", "-v")
    result.assert_outcomes(passed=1)
    assert warm["cache"]["changed"] is False and warm["cache"]["digest"] == digest
    assert digest_of(cache, pytester.path) == digest
    assert (cache / "contents.json").stat().st_mtime_ns == recorded
    assert f"cache contents: unchanged (digest {digest})" in result.outlines

    result, grown = run_jax("--jax-cache-dir=cache", "-p", "no:xdist", env={"SHAPE_N": "5"})
    result.assert_outcomes(passed=1)
    assert grown["cache"]["changed"] is True
    assert grown["cache"]["digest"] == digest_of(cache, pytester.path) != digest
    assert json.loads((cache / "contents.json").read_text())["digest"] == grown["cache"]["digest"]


# -- the job summary -----------------------------------------------------------------------


def sample_document() -> dict[str, Any]:
    recorder = Recorder()
    recorder.begin("test_a.py::test_x[a|b]", "call")
    compile_(recorder, "jit(hit)", HIT, 0.1, 0.5)
    compile_(recorder, "jit(miss)", MISS, 0.5)
    recorder.begin("test_b.py::test_y", "setup")
    recorder.start_compile(host_callbacks=True)
    recorder.on_event(REQUEST_EVENT)
    recorder.note_unwritten(reasons.HOST_CALLBACKS)
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.2, fun_name="jit(printing)")
    recorder.end("passed")
    return build(
        recorder,
        misses=[Miss("jit(miss)-0123", NEW_PROGRAM, NEW)],
        notices=("a notice | with a pipe",),
        before=Usage(4, 4096, digest="aaaa"),
        after=Usage(5, 5120, digest="bbbb"),
        maintenance=MaintenanceResult(ran=True, evicted=1),
        where="/work/.jaxcache",
        source="--jax-cache-dir",
    )


def test_the_job_summary_is_markdown_with_real_tables() -> None:
    """Rendered by a Markdown library: the figures table, the slowest phases, the
    uncachable tests, the programs not written and the misses are real tables with the
    report's figures (one arithmetic: hits/lookups and the rate agree); a pipe in a test
    id stays in its cell."""
    document = sample_document()
    rendered = html(summary.markdown(document))
    assert rendered.count("<table>") == 5
    assert "<td><strong>1/2 lookups hit (50.0%)</strong></td>" in rendered
    outside = compiled_outside(document["totals"])
    assert outside.startswith("1 program compiled outside the cachable set")
    assert f"<td>{outside}</td>" in rendered
    assert "<td>4 entries, 4.0 KiB → 5 entries, 5.0 KiB: <strong>changed</strong>" in rendered
    assert "<code>test_a.py::test_x[a|b]</code>" in rendered
    assert "<td><code>test_b.py::test_y</code></td>" in rendered
    assert "<strong>not marked jax_errors</strong>" in rendered
    assert "<td>new program: no earlier session compiled it</td>" in rendered
    assert "<h4>Compiled and not written</h4>" in rendered
    assert f"<td>{reasons.not_written(reasons.HOST_CALLBACKS)}</td>" in rendered
    assert "<li>a notice | with a pipe</li>" in rendered


def test_a_session_appends_its_summary_in_github_actions(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """With GITHUB_STEP_SUMMARY set, each session appends its section (after what
    other steps wrote); ``--jax-cache-summary=`` turns it off."""
    write_files(pytester.path, SUITE)
    target = pytester.path / "step_summary.md"
    target.write_text("# Tests\n\n")
    env = {"GITHUB_STEP_SUMMARY": str(target)}
    for _ in range(2):
        result, _ = run_jax("--jax-cache-dir=cache", "-n", "2", env=env)
        result.assert_outcomes(passed=1)
    text = target.read_text()
    assert text.startswith("# Tests\n\n### JAX compilation cache\n")
    assert text.count("### JAX compilation cache") == 2
    assert html(text).count("<table>") >= 2
    result, _ = run_jax("--jax-cache-dir=cache", "--jax-cache-summary=", env=env)
    result.assert_outcomes(passed=1)
    assert target.read_text() == text
