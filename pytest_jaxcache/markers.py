"""The markers the plugin registers: one name each, used everywhere by these constants."""

from __future__ import annotations

ERRORS = "jax_errors"
NO_CACHE = "jax_no_cache"

DESCRIPTIONS = {
    ERRORS: "the test switches on runtime error checks that use host callbacks "
    "(jax.debug.callback, io_callback, equinox.error_if); its programs are accounted "
    "apart from the cachable rest.",
    NO_CACHE: "run this test with JAX's persistent compilation cache bypassed "
    "(no lookup, no write).",
}
