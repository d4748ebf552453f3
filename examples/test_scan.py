"""Recurrences written with ``jax.lax.scan``.

Each sequence length / hidden size compiles a distinct program; results are
checked against straightforward numpy loops or closed forms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from numpy.testing import assert_allclose

# ---------------------------------------------------------------------------
# Elman RNN cell
# ---------------------------------------------------------------------------


def rnn_params(key, n_in, n_hidden):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w_x": jax.random.normal(k1, (n_in, n_hidden)) / np.sqrt(n_in),
        "w_h": jax.random.normal(k2, (n_hidden, n_hidden)) * (0.9 / np.sqrt(n_hidden)),
        "b": 0.1 * jax.random.normal(k3, (n_hidden,)),
    }


def rnn_scan(params, h0, xs):
    def cell(h, x):
        h = jnp.tanh(x @ params["w_x"] + h @ params["w_h"] + params["b"])
        return h, h

    return lax.scan(cell, h0, xs)


def rnn_numpy(params, h0, xs):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.asarray(h0, np.float64)
    hs = []
    for x in np.asarray(xs, np.float64):
        h = np.tanh(x @ p["w_x"] + h @ p["w_h"] + p["b"])
        hs.append(h)
    return h, np.stack(hs)


@pytest.mark.parametrize(
    "length, batch, n_in, n_hidden",
    [
        (8, 4, 3, 16),
        (64, 8, 5, 32),
        (128, 2, 8, 24),
        (50, 16, 6, 48),
    ],
)
def test_rnn_matches_numpy_loop(key, length, batch, n_in, n_hidden):
    kp, kx = jax.random.split(key)
    params = rnn_params(kp, n_in, n_hidden)
    xs = jax.random.normal(kx, (length, batch, n_in))
    h0 = jnp.zeros((batch, n_hidden))

    h_final, hs = jax.jit(rnn_scan)(params, h0, xs)

    assert hs.shape == (length, batch, n_hidden)
    assert h_final.shape == (batch, n_hidden)
    ref_final, ref_hs = rnn_numpy(params, h0, xs)
    assert_allclose(np.asarray(hs), ref_hs, rtol=1e-4, atol=1e-5)
    assert_allclose(np.asarray(h_final), ref_final, rtol=1e-4, atol=1e-5)
    assert_allclose(np.asarray(h_final), np.asarray(hs[-1]))


@pytest.mark.parametrize("length, n_hidden", [(16, 8), (40, 12)])
def test_rnn_bptt_trains_to_target(key, length, n_hidden):
    """Backprop through time: fit the final hidden state to a fixed target."""
    kp, kx, kt = jax.random.split(key, 3)
    n_in, batch = 4, 8
    params = rnn_params(kp, n_in, n_hidden)
    xs = jax.random.normal(kx, (length, batch, n_in))
    h0 = jnp.zeros((batch, n_hidden))
    target = 0.5 * jnp.tanh(jax.random.normal(kt, (batch, n_hidden)))

    def loss(params):
        h_final, _ = rnn_scan(params, h0, xs)
        return jnp.mean((h_final - target) ** 2)

    @jax.jit
    def step(params):
        value, grads = jax.value_and_grad(loss)(params)
        new = jax.tree_util.tree_map(lambda p, g: p - 1.0 * g, params, grads)
        return new, value

    losses = []
    for _ in range(30):
        params, value = step(params)
        losses.append(float(value))

    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------------------
# Cumulative ops and linear recurrences with closed forms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(100,), (37, 5)])
def test_scan_cumsum_and_cumprod(shape):
    rng = np.random.default_rng(0)
    xs = rng.uniform(0.9, 1.1, size=shape).astype(np.float32)

    @jax.jit
    def cumulative(xs):
        def body(carry, x):
            s, p = carry
            s, p = s + x, p * x
            return (s, p), (s, p)

        init = (jnp.zeros(xs.shape[1:]), jnp.ones(xs.shape[1:]))
        _, (sums, prods) = lax.scan(body, init, xs)
        return sums, prods

    sums, prods = cumulative(xs)
    assert_allclose(np.asarray(sums), np.cumsum(xs.astype(np.float64), axis=0), rtol=1e-5)
    assert_allclose(np.asarray(prods), np.cumprod(xs.astype(np.float64), axis=0), rtol=1e-4)


@pytest.mark.parametrize("length, decay", [(20, 0.5), (200, 0.99)])
def test_exponential_moving_average_closed_form(length, decay):
    """EMA of a constant input: m_t = c * (1 - decay**t)."""
    c = 3.0

    @jax.jit
    def ema(xs):
        def body(m, x):
            m = decay * m + (1.0 - decay) * x
            return m, m

        return lax.scan(body, jnp.float32(0.0), xs)[1]

    out = ema(jnp.full((length,), c))
    t = np.arange(1, length + 1)
    assert_allclose(np.asarray(out), c * (1.0 - decay**t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [30])
def test_fibonacci_via_matrix_scan(n):
    """A 2x2 linear recurrence unrolled by scan reproduces Fibonacci numbers."""

    @jax.jit
    def fib(n_steps_dummy):
        m = jnp.array([[1, 1], [1, 0]], dtype=jnp.int32)

        def body(v, _):
            v = m @ v
            return v, v[1]

        return lax.scan(body, jnp.array([1, 0], jnp.int32), n_steps_dummy)[1]

    out = np.asarray(fib(jnp.zeros((n,))))
    expected = [1, 1]
    while len(expected) < n:
        expected.append(expected[-1] + expected[-2])
    np.testing.assert_array_equal(out, np.array(expected[:n]))
