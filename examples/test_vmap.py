"""Per-example gradients with ``jax.vmap`` over ``jax.grad``.

Linear and logistic regression have closed-form per-example gradients, which
makes them convenient references for the vectorised versions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

SHAPES = [
    pytest.param(16, 4, id="b16-d4"),
    pytest.param(64, 32, id="b64-d32"),
    pytest.param(33, 128, id="b33-d128"),
]


def make_regression(key, batch, dim):
    kx, kw, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (batch, dim))
    w = jax.random.normal(kw, (dim,))
    y = x @ w + 0.1 * jax.random.normal(ky, (batch,))
    return x, y


def squared_error(params, x, y):
    w, b = params
    return (x @ w + b - y) ** 2


@pytest.mark.parametrize("batch, dim", SHAPES)
def test_per_example_grads_linear_closed_form(key, batch, dim):
    kx, kp = jax.random.split(key)
    x, y = make_regression(kx, batch, dim)
    params = (jax.random.normal(kp, (dim,)), jnp.float32(0.3))

    per_example = jax.jit(jax.vmap(jax.grad(squared_error), in_axes=(None, 0, 0)))
    gw, gb = per_example(params, x, y)

    assert gw.shape == (batch, dim)
    assert gb.shape == (batch,)
    w, b = (np.asarray(p, np.float64) for p in params)
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    resid = xn @ w + b - yn
    assert_allclose(np.asarray(gw), 2 * resid[:, None] * xn, rtol=1e-4, atol=1e-4)
    assert_allclose(np.asarray(gb), 2 * resid, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch, dim", SHAPES)
def test_mean_of_per_example_grads_equals_batch_grad(key, batch, dim):
    x, y = make_regression(key, batch, dim)
    params = (jnp.zeros((dim,)), jnp.float32(0.0))

    @jax.jit
    def both(params, x, y):
        per = jax.vmap(jax.grad(squared_error), in_axes=(None, 0, 0))(params, x, y)
        full = jax.grad(lambda p: jnp.mean(squared_error(p, x, y)))(params)
        return per, full

    (pw, pb), (fw, fb) = both(params, x, y)
    assert_allclose(np.asarray(pw.mean(axis=0)), np.asarray(fw), rtol=1e-4, atol=1e-5)
    assert_allclose(float(pb.mean()), float(fb), rtol=1e-4, atol=1e-5)


def logistic_nll(w, x, label):
    logit = x @ w
    return jnp.logaddexp(0.0, logit) - label * logit


@pytest.mark.parametrize("batch, dim", [(32, 8), (10, 64)])
def test_per_example_grads_logistic_closed_form(key, batch, dim):
    kx, kw, kl = jax.random.split(key, 3)
    x = jax.random.normal(kx, (batch, dim))
    w = 0.5 * jax.random.normal(kw, (dim,))
    labels = jax.random.bernoulli(kl, 0.5, (batch,)).astype(jnp.float32)

    grads = jax.jit(jax.vmap(jax.grad(logistic_nll), in_axes=(None, 0, 0)))(w, x, labels)

    xn = np.asarray(x, np.float64)
    p = 1.0 / (1.0 + np.exp(-(xn @ np.asarray(w, np.float64))))
    expected = (p - np.asarray(labels, np.float64))[:, None] * xn
    assert grads.shape == (batch, dim)
    assert_allclose(np.asarray(grads), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch, dim, clip", [(64, 16, 1.0), (128, 10, 4.0)])
def test_clipped_per_example_sgd(key, batch, dim, clip):
    """DP-SGD-style step: clip each example's gradient, then average."""
    x, y = make_regression(key, batch, dim)
    params = (jnp.zeros((dim,)), jnp.float32(0.0))

    @jax.jit
    def clipped_step(params, x, y):
        gw, gb = jax.vmap(jax.grad(squared_error), in_axes=(None, 0, 0))(params, x, y)
        norms = jnp.sqrt(jnp.sum(gw**2, axis=1) + gb**2)
        scale = jnp.minimum(1.0, clip / (norms + 1e-12))
        gw, gb = gw * scale[:, None], gb * scale
        new = (params[0] - 0.5 * gw.mean(0), params[1] - 0.5 * gb.mean())
        clipped_norms = jnp.sqrt(jnp.sum(gw**2, axis=1) + gb**2)
        return new, clipped_norms, jnp.mean(squared_error(params, x, y))

    losses = []
    for _ in range(40):
        params, clipped_norms, loss = clipped_step(params, x, y)
        losses.append(float(loss))
        assert float(clipped_norms.max()) <= clip * (1 + 1e-5)

    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("n_points", [25])
def test_vmap_jacobian_of_elementwise_fn(n_points):
    """vmap(grad(sin)) is cos; vmap over a Hessian diagonal of x**3 is 6x."""
    xs = jnp.linspace(-2.0, 2.0, n_points)

    @jax.jit
    def derivs(xs):
        d1 = jax.vmap(jax.grad(jnp.sin))(xs)
        d2 = jax.vmap(jax.grad(jax.grad(lambda t: t**3)))(xs)
        return d1, d2

    d1, d2 = derivs(xs)
    xn = np.linspace(-2.0, 2.0, n_points)
    assert_allclose(np.asarray(d1), np.cos(xn), rtol=1e-5, atol=1e-6)
    assert_allclose(np.asarray(d2), 6 * xn, rtol=1e-5, atol=1e-5)
