"""A small multilayer perceptron trained with hand-written, jitted SGD.

Every parametrization uses different layer widths and/or batch sizes, so each
one traces and compiles fresh XLA programs (forward pass, loss, and a training
step that unrolls several SGD updates).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

N_INNER_STEPS = 4  # SGD updates unrolled inside one jitted call
LEARNING_RATE = 0.05


def init_params(key, sizes):
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, (n_in, n_out) in zip(keys, itertools.pairwise(sizes), strict=False):
        w = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in)
        params.append((w, jnp.zeros((n_out,))))
    return params


def forward(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def mse_loss(params, x, y):
    return jnp.mean((forward(params, x) - y) ** 2)


@jax.jit
def loss_fn(params, x, y):
    return mse_loss(params, x, y)


@jax.jit
def train_step(params, x, y):
    """Run N_INNER_STEPS of plain SGD; return new params and the first loss."""
    first_loss = None
    for _ in range(N_INNER_STEPS):
        loss, grads = jax.value_and_grad(mse_loss)(params, x, y)
        if first_loss is None:
            first_loss = loss
        params = jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g, params, grads)
    return params, first_loss


def make_data(key, batch, n_in, n_out):
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (batch, n_in))
    w_true = jax.random.normal(kw, (n_in, n_out)) / jnp.sqrt(n_in)
    y = jnp.sin(x @ w_true)
    return x, y


# ---------------------------------------------------------------------------
# Module-scoped fixture: builds and trains one reference model once, so every
# test in this module that uses it shares the compiled programs and results.
# ---------------------------------------------------------------------------

REFERENCE_SIZES = (12, 48, 48, 3)
REFERENCE_BATCH = 64


@pytest.fixture(scope="module")
def trained_reference():
    key = jax.random.PRNGKey(42)
    kp, kd = jax.random.split(key)
    params = init_params(kp, REFERENCE_SIZES)
    x, y = make_data(kd, REFERENCE_BATCH, REFERENCE_SIZES[0], REFERENCE_SIZES[-1])
    initial_loss = float(loss_fn(params, x, y))
    trained = params
    for _ in range(25):
        trained, _ = train_step(trained, x, y)
    jax.block_until_ready(trained)
    return {
        "params": trained,
        "x": x,
        "y": y,
        "initial_loss": initial_loss,
        "final_loss": float(loss_fn(trained, x, y)),
    }


def test_reference_model_learns(trained_reference):
    assert trained_reference["final_loss"] < 0.5 * trained_reference["initial_loss"]


def test_reference_model_output_shape(trained_reference):
    out = jax.jit(forward)(trained_reference["params"], trained_reference["x"])
    assert out.shape == (REFERENCE_BATCH, REFERENCE_SIZES[-1])
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))


def test_reference_matches_numpy_forward(trained_reference):
    params = trained_reference["params"]
    x = trained_reference["x"]
    h = np.asarray(x, dtype=np.float64)
    for w, b in params[:-1]:
        h = np.tanh(h @ np.asarray(w, np.float64) + np.asarray(b, np.float64))
    w, b = params[-1]
    expected = h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    got = jax.jit(forward)(params, x)
    assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Parametrized training: each (sizes, batch) pair compiles its own programs.
# ---------------------------------------------------------------------------

ARCHITECTURES = [
    pytest.param((8, 16, 1), 32, id="8-16-1-b32"),
    pytest.param((8, 32, 32, 1), 64, id="8-32-32-1-b64"),
    pytest.param((16, 64, 64, 4), 128, id="16-64-64-4-b128"),
    pytest.param((32, 128, 64, 8), 64, id="32-128-64-8-b64"),
    pytest.param((24, 40, 40, 40, 2), 48, id="24-40x3-2-b48"),
    pytest.param((20, 24, 24, 24, 24, 5), 40, id="20-24x4-5-b40"),
]


@pytest.mark.parametrize("sizes, batch", ARCHITECTURES)
def test_sgd_reduces_loss(key, sizes, batch):
    kp, kd = jax.random.split(key)
    params = init_params(kp, sizes)
    x, y = make_data(kd, batch, sizes[0], sizes[-1])

    losses = []
    for _ in range(10):
        params, loss = train_step(params, x, y)
        losses.append(float(loss))
    final = float(loss_fn(params, x, y))

    assert np.all(np.isfinite(losses))
    assert final < losses[0]
    # Loss after training should be substantially lower than at init.
    assert final < 0.8 * losses[0], (losses, final)
    # Parameter shapes are preserved by the update.
    for (w, b), (n_in, n_out) in zip(params, itertools.pairwise(sizes), strict=False):
        assert w.shape == (n_in, n_out)
        assert b.shape == (n_out,)


@pytest.mark.parametrize(
    "sizes, batch",
    [
        pytest.param((5, 12, 12, 3), 12, id="5-12-12-3-b12"),
        pytest.param((7, 9, 9, 9, 1), 6, id="7-9x3-1-b6"),
    ],
)
def test_grad_matches_finite_differences(key, sizes, batch):
    kp, kd, kv = jax.random.split(key, 3)
    params = init_params(kp, sizes)
    x, y = make_data(kd, batch, sizes[0], sizes[-1])

    grads = jax.jit(jax.grad(mse_loss))(params, x, y)

    # Directional derivative along a random direction, checked with a central
    # difference computed in float64 numpy.
    leaves, _treedef = jax.tree_util.tree_flatten(params)
    dkeys = jax.random.split(kv, len(leaves))
    direction = [jax.random.normal(k, leaf.shape) for k, leaf in zip(dkeys, leaves, strict=True)]
    analytic = sum(
        float(jnp.vdot(g, d))
        for g, d in zip(jax.tree_util.tree_leaves(grads), direction, strict=False)
    )

    def np_loss(flat):
        h = np.asarray(x, np.float64)
        pairs = list(zip(flat[0::2], flat[1::2], strict=False))
        for w, b in pairs[:-1]:
            h = np.tanh(h @ w + b)
        w, b = pairs[-1]
        return np.mean((h @ w + b - np.asarray(y, np.float64)) ** 2)

    base = [np.asarray(leaf, np.float64) for leaf in leaves]
    dirs = [np.asarray(d, np.float64) for d in direction]
    eps = 1e-5
    plus = np_loss([p + eps * d for p, d in zip(base, dirs, strict=False)])
    minus = np_loss([p - eps * d for p, d in zip(base, dirs, strict=False)])
    numeric = (plus - minus) / (2 * eps)

    assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-5)
