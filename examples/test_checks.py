"""A runtime check inside jitted code via ``jax.debug.callback``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.mark.jax_errors
def test_debug_callback_finite_check():
    seen = []

    def record_finite(all_finite, max_abs):
        seen.append((bool(all_finite), float(max_abs)))

    @jax.jit
    def normalise(x):
        y = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        jax.debug.callback(record_finite, jnp.all(jnp.isfinite(y)), jnp.max(jnp.abs(y)))
        return y

    x = jnp.arange(1.0, 13.0).reshape(3, 4)
    y = normalise(x)
    jax.block_until_ready(y)
    jax.effects_barrier()

    assert len(seen) == 1
    all_finite, max_abs = seen[0]
    assert all_finite
    assert 0.0 < max_abs <= 1.0
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), 1.0, rtol=1e-6)

    # A zero row makes the normalisation produce NaNs; the check must see it.
    bad = x.at[1].set(0.0)
    jax.block_until_ready(normalise(bad))
    jax.effects_barrier()
    assert len(seen) == 2
    assert seen[1][0] is False
