"""The lowering tier (``--jax-cache-lowering``) in real sessions: a program whose lowering
would differ is lowered again, one whose lowering would not is served, the results are
the same with the tier on and off, and ``verify`` finds every served module identical to
a fresh lowering.

One suite, run in five sessions over one cache: cold (variant a), warm (a: everything
served), the other variant (b: each test changes one thing its name says; the
``_same`` tests change something lowering never sees), the tier off (a: the reference
results), and ``verify`` (b). Each test saves its result, so results are compared
across sessions. A program counts as served when JAX did not lower it
(``compiles[].lowered``: the tier served its module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import Session, once_per_run, run_session, write_files

from pytest_jaxcache.jax.lowering import CUSTOM_CALL, STORE_REFUSED

SUITE = {
    "conftest.py": """
        import os
        from pathlib import Path

        import numpy as np
        import pytest

        B = os.environ["VARIANT"] == "b"


        @pytest.fixture
        def keep(request):
            def save(value):
                out = Path(os.environ["RESULTS"]) / f"{request.node.name}.npy"
                np.save(out, np.asarray(value))
            return save
    """,
    "test_lowered.py": """
        import jax
        import jax.numpy as jnp
        import numpy as np
        from conftest import B
        from jax.sharding import Mesh, NamedSharding, PartitionSpec


        def x4():
            return jnp.arange(4.0)


        def test_function_changed(keep):
            def changed_function(x):
                return x * 3.0 if B else x * 2.0
            keep(jax.jit(changed_function)(x4()))


        def test_constant_changed(keep):
            table = np.full(4, 2.0 if B else 1.0, np.float32)
            def changed_constant(x):
                return x + table
            keep(jax.jit(changed_constant)(x4()))


        def test_closure_value_changed(keep):
            scale = 2.5 if B else 1.5
            def changed_closure(x):
                return x * scale
            keep(jax.jit(changed_closure)(x4()))


        def test_matmul_precision_changed(keep):
            def changed_precision(a):
                return a @ a
            with jax.default_matmul_precision("highest" if B else "bfloat16"):
                keep(jax.jit(changed_precision)(jnp.eye(4) * 1.001))


        def test_x64_changed(keep):
            def changed_x64(x):
                return x + 1
            before = jax.config.jax_enable_x64
            jax.config.update("jax_enable_x64", B)
            try:
                keep(jax.jit(changed_x64)(np.arange(4)))
            finally:
                jax.config.update("jax_enable_x64", before)


        def test_sharding_changed(keep):
            def changed_sharding(x):
                return x * 2
            mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
            spec = PartitionSpec() if B else PartitionSpec("d")
            x = jax.device_put(x4(), NamedSharding(mesh, spec))
            keep(jax.jit(changed_sharding)(x))


        def test_donation_changed(keep):
            def changed_donation(x):
                return x + 1
            donate = (0,) if B else ()
            keep(jax.jit(changed_donation, donate_argnums=donate)(x4()))


        def test_static_argument_changed(keep):
            def changed_static(x, power):
                return x ** power
            keep(jax.jit(changed_static, static_argnums=1)(x4(), 3 if B else 2))


        def test_static_argument_same(keep):
            def same_static(x, power):
                return x ** power
            keep(jax.jit(same_static, static_argnums=1)(x4(), 2))


        def test_custom_jvp_rule_changed_without_grad_same(keep):
            @jax.custom_jvp
            def same_softplus(x):
                return jnp.log1p(jnp.exp(x))

            @same_softplus.defjvp
            def _(primals, tangents):
                (x,), (t,) = primals, tangents
                return same_softplus(x), jax.nn.sigmoid(x) * t * (2.0 if B else 1.0)
            keep(jax.jit(same_softplus)(x4()))


        def test_custom_vjp_rule_changed_under_grad(keep):
            @jax.custom_vjp
            def changed_clip(x):
                return x

            def fwd(x):
                return x, None

            def bwd(_, g):
                return (g * (0.5 if B else 0.25),)

            changed_clip.defvjp(fwd, bwd)

            def changed_clip_loss(x):
                return changed_clip(x).sum()
            keep(jax.jit(jax.grad(changed_clip_loss))(x4()))


        def test_scan_body_changed(keep):
            def changed_scan(xs):
                def body(carry, x):
                    return carry + (x * 2 if B else x), carry
                return jax.lax.scan(body, 0.0, xs)
            keep(jax.jit(changed_scan)(x4())[0])


        def test_while_loop_same(keep):
            def same_while(n):
                step = lambda c: (c[0] + 1, c[1] * 2)
                return jax.lax.while_loop(lambda c: c[0] < n, step, (0, 1))
            keep(jax.jit(same_while)(5)[1])


        def test_nested_jit_inner_changed(keep):
            @jax.jit
            def inner(x):
                return jnp.sin(x) if B else jnp.cos(x)

            def changed_nested(x):
                return inner(x) + 1
            keep(jax.jit(changed_nested)(x4()))


        def test_nested_jit_same(keep):
            @jax.jit
            def inner(x):
                return jnp.tanh(x)

            def same_nested(x):
                return inner(x) * 2
            keep(jax.jit(same_nested)(x4()))
    """,
}

# Each changed test's own program, by the name its function gives it.
CHANGED = {
    "test_function_changed": "changed_function",
    "test_constant_changed": "changed_constant",
    "test_closure_value_changed": "changed_closure",
    "test_matmul_precision_changed": "changed_precision",
    "test_x64_changed": "changed_x64",
    "test_sharding_changed": "changed_sharding",
    "test_donation_changed": "changed_donation",
    "test_static_argument_changed": "changed_static",
    "test_custom_vjp_rule_changed_under_grad": "changed_clip",
    "test_scan_body_changed": "changed_scan",
    "test_nested_jit_inner_changed": "changed_nested",
}
SAME = {
    "test_static_argument_same": "same_static",
    "test_custom_jvp_rule_changed_without_grad_same": "same_softplus",
    "test_while_loop_same": "same_while",
    "test_nested_jit_same": "same_nested",
}
N_TESTS = len(CHANGED) + len(SAME)


def session(root: Path, name: str, variant: str, lowering: str) -> Session:
    results = root / f"results-{name}"
    results.mkdir()
    found = run_session(
        root,
        "--jax-cache-dir=cache",
        f"--jax-cache-lowering={lowering}",
        "-p",
        "no:xdist",
        "-p",
        "no:randomly",
        env={"VARIANT": variant, "RESULTS": str(results), "JAX_NUM_CPU_DEVICES": "2"},
    )
    found.result.assert_outcomes(passed=N_TESTS)
    return found


def results(root: Path, name: str) -> dict[str, np.ndarray[Any, Any]]:
    return {path.stem: np.load(path) for path in sorted((root / f"results-{name}").iterdir())}


def lowered_programs(report: dict[str, Any], test: str) -> dict[str, bool]:
    """The programs of ``test`` (by the part of their name we gave them) and whether
    JAX lowered each."""
    named = [*CHANGED.values(), *SAME.values()]
    found: dict[str, bool] = {}
    for record in report["compiles"]:
        if record["test"].endswith(f"::{test}"):
            for name in named:
                if name in record["name"]:
                    found[name] = found.get(name, False) or record["lowered"]
    return found


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Session]]:
    """Five sessions in a row on one cache, once per test run (every test only reads
    them): what each printed and reported."""

    def build(root: Path) -> dict[str, Any]:
        write_files(root, SUITE)
        runs = {
            "cold": session(root, "cold", "a", "on"),
            "warm": session(root, "warm", "a", "on"),
            "b": session(root, "b", "b", "on"),
            "off": session(root, "off", "a", "off"),
            "verify": session(root, "verify", "b", "verify"),
        }
        return {name: run.to_builtins() for name, run in runs.items()}

    root, runs = once_per_run(tmp_path_factory, "lowering", build)
    return root, {name: Session.from_builtins(run) for name, run in runs.items()}


def test_a_warm_session_serves_every_module_it_stored(
    sessions: tuple[Path, dict[str, Session]],
) -> None:
    """Cold, every program is lowered and stored; warm, every stored one is served (JAX
    lowers none of the suite's programs) and the tier says so."""
    _, runs = sessions
    cold, warm = runs["cold"].report["lowering"], runs["warm"].report["lowering"]
    assert cold["mode"] == "on" and cold["ran"] and cold["hits"] == 0 and cold["stored"] > 0
    # Every miss is stored, the process's first lowering too (it comes before the first
    # compile, which used to be what bound the store to this machine's namespace).
    assert cold["stored"] == cold["misses"] and STORE_REFUSED not in cold["not_stored"]
    assert (warm["hits"], warm["stored"]) == (cold["stored"], 0)
    # Time saved is recorded lowering time less serving time: it can be negative for
    # programs this small (JAX 0.12 lowers them faster than they parse), so no sign is
    # asserted; serving took time, and it was counted.
    assert warm["serve_secs"] > 0 and warm["saved_secs"] != 0
    for test in [*CHANGED, *SAME]:
        assert not any(lowered_programs(runs["warm"].report, test).values()), test
    assert any(line.startswith("lowering: on, ") for line in runs["warm"].result.outlines)


@pytest.mark.parametrize("test", sorted(CHANGED))
def test_a_program_whose_lowering_changed_is_lowered_again(
    sessions: tuple[Path, dict[str, Session]], test: str
) -> None:
    _, runs = sessions
    assert lowered_programs(runs["b"].report, test) == {CHANGED[test]: True}


@pytest.mark.parametrize("test", sorted(SAME))
def test_a_program_whose_lowering_did_not_change_is_served(
    sessions: tuple[Path, dict[str, Session]], test: str
) -> None:
    _, runs = sessions
    assert lowered_programs(runs["b"].report, test) == {SAME[test]: False}


def test_results_are_the_same_with_the_tier_on_and_off(
    sessions: tuple[Path, dict[str, Session]],
) -> None:
    """Served modules compute exactly what freshly lowered ones do: the warm session's
    results (served) equal the session without the tier, bit for bit; and variant b's
    under verify (lowered anyway) equal variant b's served ones."""
    root, _ = sessions
    for served, reference in (("warm", "off"), ("b", "verify"), ("cold", "off")):
        mine, theirs = results(root, served), results(root, reference)
        assert mine.keys() == theirs.keys() and len(mine) == N_TESTS
        for name, value in mine.items():
            assert value.dtype == theirs[name].dtype and value.tobytes() == theirs[name].tobytes()


def test_verify_finds_every_served_module_identical(
    sessions: tuple[Path, dict[str, Session]],
) -> None:
    """``verify`` lowers anyway and compares: every module the cache held for variant b
    is the one JAX builds, and the free check passed for every one served."""
    _, runs = sessions
    verify = runs["verify"].report["lowering"]
    assert verify["mode"] == "verify" and verify["hits"] > 0
    assert (verify["verified"], verify["mismatched"], verify["mismatches"]) == (
        verify["hits"],
        0,
        [],
    )
    assert verify["relocated"] == 0  # one process after another: every location the same
    served = runs["b"].report["lowering"]
    assert served["checked"] == served["hits"] > 0 and served["check_failed"] == 0


def test_the_tier_off_leaves_lowering_to_jax(sessions: tuple[Path, dict[str, Session]]) -> None:
    _, runs = sessions
    off = runs["off"].report
    assert off["lowering"] is None
    assert all(record["lowered"] for record in off["compiles"])


KERNELS = {
    "test_kernels.py": """
        import jax
        import jax.numpy as jnp
        import numpy as np
        import pytest


        def test_lapack_served_first():
            # The process's first program: nothing lowered before it initialised LAPACK.
            x = np.arange(12, dtype=np.float32).reshape(3, 4)
            nuclear = jax.jit(lambda a: jnp.linalg.norm(a, ord="nuc"))(x)
            np.testing.assert_allclose(nuclear, np.linalg.norm(x, ord="nuc"), rtol=1e-5)


        def test_a_kernel_nobody_registered():
            def call(x):
                out = jax.ShapeDtypeStruct(x.shape, x.dtype)
                return jax.ffi.ffi_call("jaxcache_test_unregistered", out)(x)

            with pytest.raises(Exception, match="jaxcache_test_unregistered"):
                jax.jit(call)(jnp.ones(3))
    """
}


def test_custom_calls_are_prepared_as_lowering_would_or_kept_out(
    pytester: pytest.Pytester,
) -> None:
    """A served module skips JAX's lowering rules, and what they prepare besides the
    module: a LAPACK call served in a fresh process, before anything initialised LAPACK,
    crashed that process. Served now, it runs and is right; a custom call the tier cannot
    prepare (here a kernel nobody registered) keeps its program out of the tier."""
    write_files(pytester.path, KERNELS)
    args = ("--jax-cache-dir=cache", "--jax-cache-lowering=on", "-p", "no:xdist")
    cold = run_session(pytester.path, *args, "-p", "no:randomly")
    cold.result.assert_outcomes(passed=2)
    stored = cold.report["lowering"]
    assert stored["not_stored"] == {CUSTOM_CALL: 1}  # every other program was stored
    assert stored["stored"] == stored["misses"] - 1 > 0

    lapack = run_session(pytester.path, *args, "test_kernels.py::test_lapack_served_first")
    lapack.result.assert_outcomes(passed=1)
    served = lapack.report["lowering"]
    assert served["misses"] == 0 and served["checked"] == served["hits"] > 0

    kernel = run_session(pytester.path, *args, "test_kernels.py::test_a_kernel_nobody_registered")
    kernel.result.assert_outcomes(passed=1)
    assert kernel.report["lowering"]["misses"] == 1
    assert kernel.report["lowering"]["not_stored"] == {CUSTOM_CALL: 1}
