"""Soak: concurrent ``-n 2`` sessions on one tiny-capped cache directory, with workers
and whole sessions SIGKILLed at random moments, in rounds. Afterwards every entry
verifies, no lock is left stuck, and the cache serves a warm run completely.

What the soak counts (and requires): failures not explained by a kill (0), sessions
that did not finish in time (0), entries that do not verify (0). A corrupt or foreign
entry served would make a test's numbers wrong: that is a failure not explained by a kill.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import (
    RunJax,
    assert_all_hits,
    decoded,
    entries,
    programs_suite,
    start_session,
    write_files,
)

pytestmark = pytest.mark.slow

ROUNDS = 3
SESSIONS_PER_ROUND = 3
SESSION_TIMEOUT = 240.0  # a session still running after this long counts as hung
CAP = "--jax-cache-max-size=60KB"  # below the suite's size: every session evicts

SUITE = programs_suite(16)
N_TESTS = 16


@dataclass
class Figures:
    sessions: int = 0
    sessions_killed: int = 0
    workers_killed: int = 0
    unexplained_failures: list[str] = field(default_factory=list)
    hangs: int = 0


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (xdist's workers of a session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def run_round(root: Path, rng: random.Random, index: int, figures: Figures) -> None:
    """Start the round's sessions together; kill some at random moments; wait for all."""
    started: list[tuple[subprocess.Popen[str], Path, str]] = []
    with contextlib.ExitStack() as stack:
        for number in range(SESSIONS_PER_ROUND):
            log_path = root / f"round{index}-session{number}.log"
            log = stack.enter_context(open(log_path, "w"))
            process = start_session(
                root, "-n", "2", "--jax-cache-dir=cache", CAP, output=log, new_group=True
            )
            stack.callback(_kill_group, process)  # nothing is left behind, whatever happens
            started.append((process, log_path, rng.choice(["none", "none", "worker", "session"])))
        for process, _, fate in started:
            if fate == "none":
                continue
            time.sleep(rng.uniform(0.5, 4.0))
            if fate == "session" and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                figures.sessions_killed += 1
            elif fate == "worker" and process.poll() is None:
                workers = children(process.pid)
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    figures.workers_killed += 1
        deadline = time.monotonic() + SESSION_TIMEOUT
        for process, log_path, fate in started:
            figures.sessions += 1
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                figures.hangs += 1
                continue
            check_session(process.returncode, log_path.read_text(), fate, figures)


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


_FAILED = re.compile(r"^FAILED (\S+)", re.MULTILINE)
_CRASHED = re.compile(r"worker '(gw\d+)' crashed while running '(\S+)'")
# A worker killed while execnet was still starting it: xdist's own internal error,
# caused by the kill. Seed 4229149717 killed one while execnet read its first bytes, seed
# 865629175 while xdist asked it for its platform (setup_nodes: the channel was closed),
# seed 3347500810 while execnet read the header of that answer.
_KILLED_AT_BOOTSTRAP = re.compile(
    r"^INTERNALERROR> (EOFError: (couldn't load message header, )?expected \d+ bytes, got 0"
    r"|OSError: connection already closed: <Gateway id='gw\d+')",
    re.M,
)


def unexplained(returncode: int, output: str, fate: str) -> list[str]:
    """What a session's outcome says that the kill it was given does not explain: a
    session nobody killed passes completely; a session whose worker was killed fails
    only the tests that worker was running (or, killed while execnet was starting it,
    ends in xdist's internal error about the lost channel); a killed session says
    nothing."""
    if returncode == -signal.SIGKILL:  # the whole session was killed
        return []
    found = []
    failed = set(_FAILED.findall(output))
    crashed = {nodeid for _, nodeid in _CRASHED.findall(output)}
    found += sorted(failed - crashed)
    at_bootstrap = fate == "worker" and _KILLED_AT_BOOTSTRAP.search(output) is not None
    if at_bootstrap and returncode == pytest.ExitCode.INTERNAL_ERROR:
        return found
    if "INTERNALERROR" in output or ("Traceback" in output and not failed):
        found.append(f"output of a session ({fate}): {output[-2000:]}")
    if returncode not in (0, 1) or (returncode == 1 and not crashed):
        found.append(f"exit {returncode} ({fate}): {output[-2000:]}")
    return found


def check_session(returncode: int, output: str, fate: str, figures: Figures) -> None:
    figures.unexplained_failures += unexplained(returncode, output, fate)


BOOTSTRAP_KILL = """\
INTERNALERROR> Traceback (most recent call last):
INTERNALERROR>   File "execnet/gateway_base.py", line 534, in read
INTERNALERROR>     raise EOFError("expected %d bytes, got %d" % (numbytes, len(buf)))
INTERNALERROR> EOFError: expected 1 bytes, got 0
"""


SETUP_KILL = """\
INTERNALERROR>   File "xdist/workermanage.py", line 331, in setup
INTERNALERROR>     self.gateway._rinfo()
INTERNALERROR>   File "execnet/gateway_base.py", line 988, in new
INTERNALERROR>     raise OSError(f"connection already closed: {self.gateway}")
INTERNALERROR> OSError: connection already closed: <Gateway id='gw0' not-receiving, ...>
"""


HEADER_KILL = """\
INTERNALERROR>   File "xdist/workermanage.py", line 331, in setup
INTERNALERROR>     self.gateway._rinfo()
INTERNALERROR>   File "execnet/gateway_base.py", line 571, in from_io
INTERNALERROR>     raise EOFError("couldn't load message header, " + e.args[0]) from None
INTERNALERROR> EOFError: couldn't load message header, expected 9 bytes, got 0
"""


@pytest.mark.parametrize(
    "output", [BOOTSTRAP_KILL, SETUP_KILL, HEADER_KILL], ids=["read", "setup", "header"]
)
@pytest.mark.parametrize("fate, explained", [("worker", True), ("none", False), ("session", False)])
def test_a_worker_killed_at_bootstrap_is_explained_by_its_kill(
    output: str, fate: str, explained: bool
) -> None:
    """The flakes of seeds 4229149717, 865629175 and 3347500810: a worker SIGKILLed while
    execnet was starting it, or while xdist set it up, ends the session in xdist's
    internal error.
    Explained when the soak killed a worker; unexplained otherwise."""
    found = unexplained(int(pytest.ExitCode.INTERNAL_ERROR), output, fate)
    assert (found == []) == explained, found


def test_killed_workers_and_sessions_never_corrupt_or_stall_the_cache(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    write_files(pytester.path, SUITE)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    figures = Figures()
    for index in range(ROUNDS):
        run_round(pytester.path, rng, index, figures)
    print(f"soak (seed {seed}): {figures}")

    cache = pytester.path / "cache"
    assert figures.hangs == 0, figures
    assert figures.unexplained_failures == [], figures
    assert figures.sessions == ROUNDS * SESSIONS_PER_ROUND
    broken = [path.name for path in entries(cache) if decoded(path) is None]
    assert broken == [], f"entries that do not verify: {broken} (seed {seed})"

    # No stuck lock, nothing poisoned: the cache fills and then serves a warm run wholly.
    result, report = run_jax("-n", "2", "--jax-cache-dir=cache", "--jax-cache-max-size=none")
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["lock_timeouts"] == 0
    result, report = run_jax("-n", "2", "--jax-cache-dir=cache", "--jax-cache-max-size=none")
    result.assert_outcomes(passed=N_TESTS)
    assert_all_hits(report)
    assert report["cachable"]["hits"] == N_TESTS
